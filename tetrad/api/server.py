"""The daemon's API server: a unix socket (mode 0660, owner root, group
`tetrad` when that group exists) served by one thread.

The daemon's event path only calls `publish()`, which checks each
subscribed client's allow/deny filters and appends the events it wants to
its bounded queue, never waiting: a client whose queue is full loses events,
which are counted and announced to it with a notice when it catches up.
Field filtering, encoding and writing happen in the server thread.  Commands (`status`, `tracingpolicy.*`) run in the daemon's
own thread through `run_commands()`, which the daemon's loop calls, so
they see consistent daemon state without locks.
"""

from __future__ import annotations

import collections
import errno
import grp
import json
import logging
import os
import queue
import selectors
import socket
import struct
import threading
from typing import Callable

from ..filters.fields import FieldFilter, apply_all
from ..filters.jsonlines import FilterError
from ..filters.match import FilterList, passes
from . import protocol

log = logging.getLogger("tetrad.api")

SOCKET_MODE = 0o660
SOCKET_GROUP = "tetrad"
CLIENT_QUEUE_EVENTS = 8192          # events waiting for one client's thread turn
CLIENT_OUT_BYTES = 1 << 20          # bytes waiting for one client's socket


class ServerError(Exception):
    pass


class _Client:
    def __init__(self, sock: socket.socket, uid: int):
        self.sock = sock
        self.uid = uid              # the peer's user id (SO_PEERCRED)
        self.inbuf = bytearray()
        self.out = bytearray()
        self.queue: collections.deque = collections.deque()
        self.subscribed = False
        self.close_after_flush = False
        self.allow = FilterList([])
        self.deny = FilterList([])
        self.field_filters: list[FieldFilter] = []
        self.dropped = 0            # written by the daemon thread only
        self.dropped_notified = 0   # written by the server thread only
        self.sent = 0


class ApiServer:
    def __init__(self, address: str, queue_events: int = CLIENT_QUEUE_EVENTS):
        self.path = protocol.parse_address(address)
        self.queue_events = queue_events
        self.commands: dict[str, Callable[[dict], object]] = {}
        self.privileged: set[str] = set()
        self.dropped_total = 0
        self.clients_total = 0
        self.subscriptions_total = 0
        self._subscribers: tuple[_Client, ...] = ()
        self._clients: dict[int, _Client] = {}
        self._pending: queue.SimpleQueue = queue.SimpleQueue()     # commands for the daemon thread
        self._replies: queue.SimpleQueue = queue.SimpleQueue()     # their replies, for the server thread
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_pending = False
        self._stopping = False
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- set-up --------------------------------------------------------------
    def register(self, op: str, handler: Callable[[dict], object], privileged: bool = False) -> None:
        """`handler(args)` runs in the daemon's thread; its return value is the
        reply's result; a ValueError/KeyError/OSError becomes the reply's error.
        A privileged command is refused to peers other than root: the socket's
        group may read events, not change what the daemon enforces."""
        self.commands[op] = handler
        if privileged:
            self.privileged.add(op)

    def start(self) -> None:
        self._listener = self._bind()
        self._thread = threading.Thread(target=self._serve, name="tetrad-api", daemon=True)
        self._thread.start()

    def _bind(self) -> socket.socket:
        path = self.path
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)             # stale: nobody listens there
            else:
                raise ServerError(f"{path}: another daemon is already listening on this socket")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)               # never world-accessible, not even briefly
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            raise ServerError(f"cannot listen on {path}: {e.strerror}") from None
        finally:
            os.umask(old)
        if os.geteuid() == 0:           # a daemon run by hand as a user keeps its own ids
            try:
                gid = grp.getgrnam(SOCKET_GROUP).gr_gid
            except KeyError:
                gid = 0
            os.chown(path, 0, gid)
        os.chmod(path, SOCKET_MODE)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for c in list(self._clients.values()):
            c.sock.close()
        if self._listener is not None:
            self._listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self._wake_r)
        os.close(self._wake_w)

    def stats(self) -> dict:
        return {"socket": self.path, "clients": len(self._clients), "subscribers": len(self._subscribers),
                "clients_total": self.clients_total, "subscriptions_total": self.subscriptions_total,
                "dropped_for_slow_clients": self.dropped_total}

    # -- the daemon's thread ---------------------------------------------------------
    def publish(self, kind: str, event: dict, line: str) -> None:
        """Offer an event to every subscriber; never blocks."""
        subscribers = self._subscribers
        if not subscribers:
            return
        for c in subscribers:
            if (c.allow or c.deny) and not passes(c.allow, c.deny, event):
                continue
            if len(c.queue) >= self.queue_events:
                c.dropped += 1
                self.dropped_total += 1
            else:
                c.queue.append((kind, event, line))
        self._wake()

    def run_commands(self) -> None:
        """Run the commands clients sent; called from the daemon's loop."""
        while True:
            try:
                client, op, args = self._pending.get_nowait()
            except queue.Empty:
                return
            try:
                reply = protocol.ok(self.commands[op](args))
            except (ValueError, KeyError, OSError) as e:
                reply = protocol.error(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
            except Exception as e:          # a bug must not take the daemon down
                log.exception("API command %s failed", op)
                reply = protocol.error(f"internal error: {e}")
            self._replies.put((client, reply))
            self._wake()

    def _wake(self) -> None:
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    # -- the server thread ---------------------------------------------------------
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        self._sel = sel
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        while not self._stopping:
            for key, mask in sel.select(timeout=0.5):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self._wake_pending = False
                else:
                    c = key.data
                    if mask & selectors.EVENT_READ:
                        self._read(c)
                    if mask & selectors.EVENT_WRITE and c.sock.fileno() >= 0:
                        self._flush(c)
            self._deliver_replies()
            for c in self._subscribers:
                self._pump(c)
        sel.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("API accept failed: %s", e)
                return
            sock.setblocking(False)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            c = _Client(sock, uid)
            self._clients[sock.fileno()] = c
            self.clients_total += 1
            self._sel.register(sock, selectors.EVENT_READ, c)

    def _read(self, c: _Client) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(c)
            return
        if c.subscribed or c.close_after_flush:
            return                          # nothing more is expected from this client
        c.inbuf += data
        if len(c.inbuf) > protocol.MAX_REQUEST_BYTES:
            self._reply_and_close(c, protocol.error("request too large"))
            return
        if b"\n" in c.inbuf:
            line = bytes(c.inbuf[:c.inbuf.index(b"\n")])
            c.inbuf.clear()
            self._request(c, line)

    def _request(self, c: _Client, line: bytes) -> None:
        try:
            req = json.loads(line)
            op, args = req["op"], req.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self._reply_and_close(c, protocol.error('bad request: expected {"op": ..., "args": {...}}'))
            return
        if op == "getevents":
            self._subscribe(c, args)
        elif op in self.privileged and c.uid != 0:
            self._reply_and_close(c, protocol.error(f"{op} needs root (uid {c.uid} may only read)"))
        elif op in self.commands:
            c.close_after_flush = True
            self._pending.put((c, op, args))
        else:
            known = ", ".join(sorted(["getevents", *self.commands]))
            self._reply_and_close(c, protocol.error(f"unknown command {op!r} (this daemon serves: {known})"))

    def _subscribe(self, c: _Client, args: dict) -> None:
        try:
            c.allow = FilterList.from_specs(args.get("allow_list") or [], "allow_list")
            c.deny = FilterList.from_specs(args.get("deny_list") or [], "deny_list")
            c.field_filters = [FieldFilter.from_spec(s, f"field_filters[{i}]")
                               for i, s in enumerate(args.get("field_filters") or [])]
        except FilterError as e:
            self._reply_and_close(c, protocol.error(str(e)))
            return
        c.subscribed = True
        self.subscriptions_total += 1
        c.out += protocol.ok({"stream": "events"})
        self._subscribers = self._subscribers + (c,)
        self._flush(c)

    def _pump(self, c: _Client) -> None:
        """Move queued events through the client's filters into its output
        buffer, as far as the buffer allows, and write."""
        while len(c.out) < CLIENT_OUT_BYTES:
            if c.dropped > c.dropped_notified:
                dropped = c.dropped
                c.out += protocol.encode({protocol.NOTICE_KEY: {
                    "dropped": dropped,
                    "message": f"this client fell behind: {dropped - c.dropped_notified} events dropped "
                               f"({dropped} in total); read faster or filter on the server"}})
                c.dropped_notified = dropped
            if not c.queue:
                break
            kind, event, line = c.queue.popleft()
            if c.field_filters:
                line = json.dumps(apply_all(c.field_filters, event), separators=(",", ":"), ensure_ascii=False)
            c.out += line.encode()
            c.out += b"\n"
            c.sent += 1
        self._flush(c)

    def _flush(self, c: _Client) -> None:
        if c.sock.fileno() < 0:
            return
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(c)
                return
            del c.out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
        if not c.out and c.close_after_flush:
            self._close(c)
            return
        try:
            if self._sel.get_key(c.sock).events != want:
                self._sel.modify(c.sock, want, c)
        except (KeyError, ValueError):
            pass

    def _reply_and_close(self, c: _Client, reply: bytes) -> None:
        c.close_after_flush = True
        c.out += reply
        self._flush(c)

    def _deliver_replies(self) -> None:
        while True:
            try:
                c, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            if c.sock.fileno() >= 0:
                self._reply_and_close(c, reply)

    def _close(self, c: _Client) -> None:
        if c.sock.fileno() < 0:
            return
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self._clients.pop(c.sock.fileno(), None)
        if c in self._subscribers:
            self._subscribers = tuple(s for s in self._subscribers if s is not c)
        try:
            c.sock.close()
        except OSError as e:
            if e.errno != errno.EBADF:
                raise
