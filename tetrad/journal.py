"""Events as native systemd journal entries (`--enable-journal`, on by default).

Each event becomes one structured entry, sent over journald's native protocol
(systemd's JOURNAL_NATIVE_PROTOCOL) to /run/systemd/journal/socket, or to
$TETRAD_JOURNAL_SOCKET in tests:
``MESSAGE`` is the event rendered on one line without colour, ``PRIORITY`` is
info, or warning for an enforcement action, and ``TETRAD_*`` fields carry the
event's type, process, policy and pod, plus ``TETRAD_EVENT`` with the full
JSON.  So `journalctl -u tetrad TETRAD_EVENT_TYPE=process_exec -o json` gives
structure.  The daemon's own log lines (stderr) carry no ``TETRAD_EVENT_TYPE``.

The protocol is written here rather than through python3-systemd's
``journal.send``: that one blocks the caller while journald is busy, and its
failures cannot be counted per entry.  Here the socket is non-blocking; an
entry journald has no room for, or that comes while journald restarts, waits
in a bounded backlog retried on every write and flush, and what does not fit
is counted as lost, so a slow or restarting journald never stalls the event
loop nor the file export.  Without any journald (no systemd) entries are
counted as lost straight away.
"""

from __future__ import annotations

import array
import collections
import errno
import fcntl
import json
import logging
import os
import socket
import struct
import threading
import time
from typing import Callable

from .encoder.compact import CompactEncoder
from .eventtypes import event_kind
from .exporter import Exporter

log = logging.getLogger("tetrad.journal")

IDENTIFIER = "tetrad"
# Bytes of entries kept while journald is busy or restarting (an entry is
# 2-5 KiB, so about a thousand; a few seconds at a high event rate).
BACKLOG_BYTES = 4 * 1024 * 1024
WARN_EVERY_S = 10.0

PRIORITY_WARNING = 4
PRIORITY_INFO = 6
# Tetragon's actions that change what the traced process does.
ENFORCEMENT_ACTIONS = frozenset({
    "KPROBE_ACTION_SIGKILL", "KPROBE_ACTION_SIGNAL", "KPROBE_ACTION_OVERRIDE",
    "KPROBE_ACTION_NOTIFYENFORCER", "KPROBE_ACTION_SET",
})

# Bigger entries go through a memfd: a datagram this size fits the default
# socket buffers (net.core.wmem_default is 208 KiB).
_MAX_DATAGRAM = 128 * 1024
# Errors after which the socket is reopened: journald restarted or went away.
_RECONNECT_ERRORS = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN)


def event_type(event: dict) -> str:
    return event_kind(event) or ""


def journal_fields(event: dict, line: str, message: str) -> list[tuple[str, str]]:
    """The entry for one event as (FIELD, value) pairs, empty values left out."""
    kind = event_type(event)
    body = _dict(event.get(kind))
    proc = _dict(body.get("process"))
    pod = _dict(proc.get("pod"))
    container = _dict(pod.get("container"))
    enforced = body.get("action") in ENFORCEMENT_ACTIONS
    fields = [
        ("MESSAGE", message),
        ("PRIORITY", str(PRIORITY_WARNING if enforced else PRIORITY_INFO)),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("TETRAD_EVENT_TYPE", kind),
        ("TETRAD_EXEC_ID", proc.get("exec_id", "")),
        ("TETRAD_PID", proc.get("pid", "")),
        ("TETRAD_BINARY", proc.get("binary", "")),
        ("TETRAD_POLICY", body.get("policy_name", "")),
        ("TETRAD_ACTION", body.get("action", "")),
        ("TETRAD_NAMESPACE", pod.get("namespace", "")),
        ("TETRAD_POD", pod.get("name", "")),
        ("TETRAD_CONTAINER_ID", container.get("id", "") or proc.get("docker", "")),
        ("TETRAD_EVENT", line),
    ]
    return [(k, v if isinstance(v, str) else str(v)) for k, v in fields if v]


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def encode_entry(fields: list[tuple[str, str]]) -> bytes:
    """journald's native serialisation: ``NAME=value\\n``, or for a value
    holding a newline ``NAME\\n`` + 64-bit little-endian length + value + ``\\n``."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalExporter(Exporter):
    """Send each event line to journald as a structured entry.

    ``render(event) -> str`` makes MESSAGE.  Nothing here raises into the
    event loop; entries that cannot be delivered are counted in
    ``lines_lost`` and reported by a warning at most every WARN_EVERY_S.
    ``stats()`` adds ``backlog`` (entries waiting for journald) and
    ``render_errors`` to the usual exporter counters.
    """

    DEFAULT_SOCKET = "/run/systemd/journal/socket"

    def __init__(self, render: Callable[[dict], str] | None = None,
                 socket_path: str = DEFAULT_SOCKET, backlog_bytes: int = BACKLOG_BYTES) -> None:
        self.path = socket_path
        # MESSAGE is what `tetrad getevents -o compact --color never` prints
        self._render = render or CompactEncoder(color="never").encode
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._backlog: collections.deque[bytes] = collections.deque()
        self._backlog_bytes = 0
        self._backlog_max = backlog_bytes
        self._was_connected = False   # then a lost connection is a journald restart
        self._closed = False
        self._failing = False
        self._lines_written = 0
        self._bytes_written = 0
        self._lines_lost = 0
        self._write_errors = 0
        self._render_errors = 0
        self._next_warning = 0.0
        try:
            self._connect()
        except OSError as e:
            self._fail(e, lost=0)

    def write(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = {}
        self.write_event(event, line)

    def write_event(self, event: dict, line: str) -> None:
        # The daemon hands over the event it serialised: parsing `line` again
        # would cost more than all the rest of an entry.
        try:
            message = self._render(event)
        except Exception as e:  # a renderer bug must not cost the event
            self._render_errors += 1
            log.debug("cannot render event for the journal: %s", e)
            message = event_type(event) or "event"
        entry = encode_entry(journal_fields(event, line, message))
        with self._lock:
            if self._closed:
                self._lines_lost += 1
                return
            if self._backlog:
                self._drain()
            if self._backlog or not self._send(entry):
                self._queue(entry)   # behind the others: order is kept

    def flush(self) -> None:
        with self._lock:
            if self._sock is None and not self._closed:
                self._reconnect()
            if not self._closed:
                self._drain()

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            self._lines_lost += len(self._backlog)
            self._backlog.clear()
            self._backlog_bytes = 0
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def stats(self) -> dict:
        with self._lock:
            return {**self._counters(self.path), "backlog": len(self._backlog),
                    "render_errors": self._render_errors}

    # -- delivery (caller holds self._lock) ----------------------------------

    def _drain(self) -> None:
        """Send the backlog, oldest first, until journald's queue is full."""
        while self._backlog:
            if not self._send(self._backlog[0]):
                return
            self._backlog_bytes -= len(self._backlog.popleft())

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self._was_connected = True

    def _send(self, entry: bytes) -> bool:
        """True once journald has the entry or it is counted as lost; False
        when journald's queue is full and the entry should wait."""
        if self._sock is None:   # flush() tries to reconnect
            if self._was_connected:
                return False     # journald restarting: wait in the backlog
            self._fail(ConnectionError(errno.ENOTCONN, "not connected"), lost=1)
            return True
        big = len(entry) > _MAX_DATAGRAM
        error = None
        for _ in range(3):
            try:
                if big:
                    self._send_memfd(entry)
                else:
                    self._sock.send(entry)
            except BlockingIOError:
                return False
            except OSError as e:
                error = e
                if e.errno == errno.EMSGSIZE and not big:
                    big = True
                    continue
                if e.errno in _RECONNECT_ERRORS:
                    if self._reconnect():
                        continue
                    return False   # journald restarting: wait in the backlog
                break
            else:
                self._delivered(entry)
                return True
        self._fail(error, lost=1)
        return True

    def _reconnect(self) -> bool:
        """After journald restarted: a new socket to the new listener."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            self._connect()
        except OSError:
            return False
        return True

    def _send_memfd(self, entry: bytes) -> None:
        """An entry too big for one datagram goes as a sealed memfd."""
        fd = os.memfd_create("tetrad-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, entry)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     array.array("i", [fd]))])
        finally:
            os.close(fd)

    def _queue(self, entry: bytes) -> None:
        if self._backlog_bytes + len(entry) > self._backlog_max:
            self._fail(BlockingIOError(errno.EAGAIN, "journald is not keeping up"), lost=1)
            return
        self._backlog.append(entry)
        self._backlog_bytes += len(entry)

    def _delivered(self, entry: bytes) -> None:
        self._lines_written += 1
        self._bytes_written += len(entry)
        if self._failing and not self._backlog:
            self._failing = False
            self._warn("writing events to the journal again (%d lost so far)", self._lines_lost)

    def _fail(self, error: OSError, lost: int) -> None:
        self._write_errors += 1
        self._lines_lost += lost
        if not self._failing:
            self._failing = True
            self._warn("cannot write events to the journal (%s): %s; the other exporters "
                       "continue, lost entries are counted (%d so far)",
                       self.path, error.strerror or error, self._lines_lost)

    def _warn(self, msg: str, *args) -> None:
        # A journald that keeps falling behind must not flood the log (which
        # goes to journald too): at most one line per WARN_EVERY_S.
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARN_EVERY_S
            log.warning(msg, *args)

