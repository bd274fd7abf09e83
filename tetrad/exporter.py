"""Event exporters: where the daemon's JSON event lines end up.

Every event reaches an exporter as one already-serialized JSON document (a
``str`` without a trailing newline).  Exporters append it as a line to a file
(``--export-filename``, rotated like lumberjack, which Tetragon uses) and/or to
stdout (``--export-stdout``).

Exporters never raise into the event loop: a failing destination (disk full,
I/O error, closed pipe) costs events, which are counted in ``stats()`` and
reported by a single warning per failure episode.
"""

from __future__ import annotations

import abc
import calendar
import gzip
import logging
import os
import re
import shutil
import sys
import threading
import time
from contextlib import suppress
from datetime import datetime
from typing import Callable, Iterable, TextIO

from .config import parse_duration

log = logging.getLogger("tetrad.exporter")

_MIB = 1024 * 1024
# Write to the kernel in chunks of this size: large enough that the per-line
# cost is a bytearray append, small enough to bound what a crash can lose.
_BUFFER_BYTES = 256 * 1024
_STAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"
_DIR_MODE = 0o750


class Exporter(abc.ABC):
    """Destination for event lines.

    ``stats()`` returns at least ``path``, ``lines_written``, ``bytes_written``,
    ``lines_lost`` and ``write_errors``.
    """

    @abc.abstractmethod
    def write(self, line: str) -> None:
        """Queue one event line (without newline); never raises on I/O errors."""

    def write_event(self, event: dict, line: str) -> None:
        """Like write(line), for exporters that also use the event's fields
        (the journal); `event` must be the dict that `line` serialises, after
        any field filter or redaction, so both say the same."""
        self.write(line)

    def flush(self) -> None:
        """Push buffered lines to the destination."""

    def close(self) -> None:
        """Flush and release the destination; later writes are counted as lost."""
        self.flush()

    @abc.abstractmethod
    def stats(self) -> dict:
        """Counters for metrics and status output."""

    def _counters(self, where: str) -> dict:
        """The counters every destination keeps (caller holds its lock)."""
        return {
            "path": where,
            "lines_written": self._lines_written,
            "bytes_written": self._bytes_written,
            "lines_lost": self._lines_lost,
            "write_errors": self._write_errors,
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class RotatingFileExporter(Exporter):
    """Append event lines to a file, rotating it by size and optionally by age.

    Rotation renames the file to ``<stem>-<UTC YYYY-mm-ddTHH-MM-SS.fff><ext>``
    next to it and starts a new one.  Backup names strictly increase (a name is
    never reused, even for two rotations in one millisecond or after the wall
    clock steps back), so sorting them by name gives rotation order.  A
    background thread gzips backups (when ``compress``) and deletes all but the
    newest ``max_backups`` (0 keeps all).

    ``lines_written``/``bytes_written`` count what reached the kernel, so lines
    still in the write buffer show up only after the next ``flush()``.
    """

    def __init__(
        self,
        path: str,
        max_size_mb: float = 10,
        max_backups: int = 5,
        compress: bool = False,
        perm: int = 0o600,
        rotation_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size_mb <= 0:
            raise ValueError(f"max_size_mb must be positive, got {max_size_mb}")
        if max_backups < 0:
            raise ValueError(f"max_backups must be >= 0, got {max_backups}")
        if rotation_interval < 0:
            raise ValueError(f"rotation_interval must be >= 0, got {rotation_interval}")
        self.path = os.path.abspath(path)
        self._dir = os.path.dirname(self.path)
        self._stem, self._ext = os.path.splitext(os.path.basename(self.path))
        self._backup_re = re.compile(
            re.escape(self._stem)
            + r"-(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3})"
            + re.escape(self._ext)
            + r"(?:\.gz(?:\.tmp)?)?$"
        )
        self._max_bytes = max(1, int(max_size_mb * _MIB))
        self._max_backups = max_backups
        self._compress = compress
        self._perm = perm
        self._interval = rotation_interval
        self._clock = clock

        self._lock = threading.Lock()
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._size = 0  # file size including the unflushed buffer
        self._durable = 0  # file size the kernel has accepted
        self._opened_at = 0.0
        self._buf = bytearray()
        self._buf_lines = 0
        self._closed = False
        self._failing = False
        self._lines_written = 0
        self._bytes_written = 0
        self._lines_lost = 0
        self._rotations = 0
        self._write_errors = 0

        self._open()  # misconfiguration (bad path, EACCES) should fail at startup
        self._last_backup_ms = max(
            (_stamp_to_ms(stamp) for stamp in self._list_backups()), default=0
        )

        self._mill_cond = threading.Condition()
        self._mill_requested = True  # tidy up backups left by a previous run
        self._mill_stopping = False
        self._mill_thread = threading.Thread(
            target=self._mill_loop, name="tetrad-export-mill", daemon=True
        )
        self._mill_thread.start()

    # -- event path ---------------------------------------------------------

    def write(self, line: str) -> None:
        data = (line + "\n").encode()
        with self._lock:
            if self._closed:
                self._lines_lost += 1
                return
            try:
                if self._fd is None:
                    self._open()
                # An oversized line still goes out whole, alone in a fresh file.
                if self._size and self._size + len(data) > self._max_bytes:
                    self._rotate()
                else:
                    self._rotate_if_old()
            except OSError as e:
                self._record_error(e, lost=1)
                return
            self._buf += data
            self._buf_lines += 1
            self._size += len(data)
            if len(self._buf) >= _BUFFER_BYTES:
                self._flush_buffer()

    def flush(self) -> None:
        with self._lock:
            if self._closed or self._fd is None:
                return
            try:
                # The daemon flushes periodically, which drives time-based
                # rotation while no events arrive.
                self._rotate_if_old()
            except OSError as e:
                self._record_error(e, lost=0)
                return
            # Checked before writing, so that lines buffered after someone
            # deleted or moved the file go to the new one.
            self._reopen_if_replaced()
            if self._fd is not None:
                self._flush_buffer()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd is not None:
                self._flush_buffer()
                self._close_fd()
        with self._mill_cond:
            self._mill_stopping = True
            self._mill_cond.notify()
        self._mill_thread.join()

    def stats(self) -> dict:
        with self._lock:
            return {**self._counters(self.path), "rotations": self._rotations}

    # -- file handling (caller holds self._lock) ----------------------------

    def _open(self) -> None:
        _make_dirs(self._dir)
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._perm
        )
        try:
            # O_CREAT's mode is narrowed by the umask, and an existing file
            # may have any mode: set it explicitly.
            os.fchmod(fd, self._perm)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        self._durable = st.st_size
        self._size = st.st_size + len(self._buf)
        self._opened_at = self._clock()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with suppress(OSError):  # the fd is released either way
                os.close(fd)

    def _flush_buffer(self) -> None:
        if not self._buf:
            return
        buf = self._buf
        written = 0
        error = None
        with memoryview(buf) as view:
            try:
                while written < len(view):
                    written += os.write(self._fd, view[written:])
            except OSError as e:
                error = e
        if error is None:
            self._commit(written, self._buf_lines)
        else:
            # Keep the whole lines that made it; cut off a partial one so the
            # file only ever holds complete JSON documents.
            keep = buf.rfind(b"\n", 0, written) + 1
            kept_lines = buf.count(b"\n", 0, keep)
            if keep < written:
                with suppress(OSError):
                    os.ftruncate(self._fd, self._durable + keep)
            self._commit(keep, kept_lines)
            self._size = self._durable
            self._record_error(error, lost=self._buf_lines - kept_lines)
        buf.clear()
        self._buf_lines = 0
        if error is not None:
            # If the operator freed space by deleting our file, its blocks stay
            # allocated until we close it.
            self._reopen_if_replaced()

    def _commit(self, nbytes: int, nlines: int) -> None:
        self._durable += nbytes
        self._bytes_written += nbytes
        self._lines_written += nlines
        if self._failing and nlines:
            self._failing = False
            log.warning(
                "writing events to %s again (%d lines lost so far)",
                self.path,
                self._lines_lost,
            )

    def _record_error(self, error: OSError, lost: int) -> None:
        self._write_errors += 1
        self._lines_lost += lost
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot write events to %s: %s; dropping events until it works again",
                self.path,
                error.strerror or error,
            )

    def _reopen_if_replaced(self) -> None:
        """Follow the path if our file was deleted or moved away by someone else."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        self._close_fd()
        try:
            self._open()
        except OSError as e:
            # Without a file, the buffered lines have nowhere to go.
            self._record_error(e, lost=self._buf_lines)
            self._buf.clear()
            self._buf_lines = 0

    # -- rotation (caller holds self._lock) ---------------------------------

    def _rotate_if_old(self) -> None:
        if self._interval and self._clock() - self._opened_at >= self._interval:
            if self._size:
                self._rotate()
            else:
                self._opened_at = self._clock()  # no point in an empty backup

    def _rotate(self) -> None:
        self._flush_buffer()
        self._close_fd()
        try:
            os.rename(self.path, self._next_backup_path())
        except OSError as e:
            # Keep appending to the current file rather than lose events.
            self._record_error(e, lost=0)
        else:
            self._rotations += 1
            with self._mill_cond:
                self._mill_requested = True
                self._mill_cond.notify()
        self._open()

    def _next_backup_path(self) -> str:
        ms = max(time.time_ns() // 1_000_000, self._last_backup_ms + 1)
        self._last_backup_ms = ms
        secs, frac = divmod(ms, 1000)
        stamp = time.strftime(_STAMP_FORMAT, time.gmtime(secs)) + f".{frac:03d}"
        return os.path.join(self._dir, f"{self._stem}-{stamp}{self._ext}")

    # -- backup maintenance (mill thread) -----------------------------------

    def _mill_loop(self) -> None:
        while True:
            with self._mill_cond:
                while not self._mill_requested and not self._mill_stopping:
                    self._mill_cond.wait()
                if not self._mill_requested:
                    return
                self._mill_requested = False
            self._mill_once()

    def _mill_once(self) -> None:
        backups = self._list_backups()
        stamps = sorted(backups)
        if self._max_backups:
            for stamp in stamps[: -self._max_backups]:
                for name in backups.pop(stamp):
                    self._remove(name)
        if not self._compress:
            return
        for stamp in sorted(backups):
            plain = f"{self._stem}-{stamp}{self._ext}"
            if plain not in backups[stamp]:
                continue
            if plain + ".gz" in backups[stamp]:
                # A previous run died after writing the .gz (which is only
                # renamed into place once complete) but before the unlink.
                self._remove(plain)
            else:
                self._gzip(os.path.join(self._dir, plain))

    def _list_backups(self) -> dict[str, list[str]]:
        """Backup file names grouped by their timestamp."""
        groups: dict[str, list[str]] = {}
        try:
            names = os.listdir(self._dir)
        except OSError as e:
            log.warning("cannot list export backups in %s: %s", self._dir, e.strerror)
            return groups
        for name in names:
            m = self._backup_re.match(name)
            if m:
                groups.setdefault(m.group(1), []).append(name)
        return groups

    def _remove(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self._dir, name))
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove old export backup %s: %s", name, e.strerror)

    def _gzip(self, src: str) -> None:
        dst = src + ".gz"
        tmp = dst + ".tmp"  # so that an existing .gz is always complete
        try:
            with open(src, "rb") as fin:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self._perm)
                with open(fd, "wb") as fout:
                    os.fchmod(fd, self._perm)
                    with gzip.GzipFile(
                        filename=os.path.basename(src), mode="wb", fileobj=fout, compresslevel=6
                    ) as gz:
                        shutil.copyfileobj(fin, gz, _MIB)
                    fout.flush()
                    os.fsync(fd)
            os.rename(tmp, dst)
            _fsync_dir(self._dir)
            os.unlink(src)
        except OSError as e:
            # The uncompressed backup stays; the next mill run retries.
            log.warning("cannot compress export backup %s: %s", src, e.strerror or e)
            with suppress(OSError):
                os.unlink(tmp)


class StreamExporter(Exporter):
    """Write event lines to a text stream (stdout by default).

    A closed pipe (``BrokenPipeError``) stops the exporter for good, quietly;
    other errors are counted and warned about once, like the file exporter.
    Lines written since the last successful ``flush()`` are counted as lost
    when the stream fails, since the stream may not have delivered them.
    """

    def __init__(self, stream: TextIO | None = None, name: str | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self.name = name or getattr(self._stream, "name", None) or "<stream>"
        self._lock = threading.Lock()
        self._pending_lines = 0
        self._pending_bytes = 0
        self._stopped = False
        self._failing = False
        self._lines_written = 0
        self._bytes_written = 0
        self._lines_lost = 0
        self._write_errors = 0

    def write(self, line: str) -> None:
        with self._lock:
            if self._stopped:
                self._lines_lost += 1
                return
            try:
                self._stream.write(line + "\n")
            except OSError as e:
                self._fail(e, lost=self._pending_lines + 1)
                return
            self._pending_lines += 1
            self._pending_bytes += len(line) + 1  # JSON from the daemon is ASCII

    def flush(self) -> None:
        with self._lock:
            if self._stopped:
                return
            try:
                self._stream.flush()
            except OSError as e:
                self._fail(e, lost=self._pending_lines)
                return
            self._lines_written += self._pending_lines
            self._bytes_written += self._pending_bytes
            if self._failing and self._pending_lines:
                self._failing = False
                log.warning(
                    "writing events to %s again (%d lines lost so far)",
                    self.name,
                    self._lines_lost,
                )
            self._pending_lines = self._pending_bytes = 0

    def close(self) -> None:
        # The stream is not ours (usually sys.stdout): flush it, don't close it.
        self.flush()
        with self._lock:
            self._stopped = True

    def stats(self) -> dict:
        with self._lock:
            return self._counters(self.name)

    def _fail(self, error: OSError, lost: int) -> None:
        self._write_errors += 1
        self._lines_lost += lost
        self._pending_lines = self._pending_bytes = 0
        if isinstance(error, BrokenPipeError):
            self._stopped = True
            log.debug("event stream %s closed by the reader; not writing to it anymore", self.name)
            self._detach_broken_pipe()
        elif not self._failing:
            self._failing = True
            log.warning(
                "cannot write events to %s: %s; dropping events until it works again",
                self.name,
                error.strerror or error,
            )

    def _detach_broken_pipe(self) -> None:
        # The stream still holds the unwritten data; point its fd at /dev/null
        # so that the interpreter's flush at exit does not fail noisily again.
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):
            return
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass
        finally:
            os.close(devnull)


class MultiExporter(Exporter):
    """Fan each line out to several exporters."""

    def __init__(self, exporters: Iterable[Exporter] = ()) -> None:
        self.exporters = list(exporters)

    def write(self, line: str) -> None:
        for exporter in self.exporters:
            exporter.write(line)

    def write_event(self, event: dict, line: str) -> None:
        for exporter in self.exporters:
            exporter.write_event(event, line)

    def flush(self) -> None:
        for exporter in self.exporters:
            exporter.flush()

    def close(self) -> None:
        for exporter in self.exporters:
            exporter.close()

    def stats(self) -> dict:
        return {"exporters": [exporter.stats() for exporter in self.exporters]}


def build_exporters(cfg) -> MultiExporter:
    """Exporters selected by the ``export_*`` settings of a daemon config.

    ``export_file_perm`` is an int mode and ``export_file_rotation_interval``
    a duration string ("0s", "1h"), as ``tetrad.config`` provides them.
    """
    exporters: list[Exporter] = []
    if cfg.export_filename:
        exporters.append(
            RotatingFileExporter(
                cfg.export_filename,
                max_size_mb=cfg.export_file_max_size_mb,
                max_backups=cfg.export_file_max_backups,
                compress=cfg.export_file_compress,
                perm=cfg.export_file_perm,
                rotation_interval=parse_duration(cfg.export_file_rotation_interval),
            )
        )
    if cfg.export_stdout:
        exporters.append(StreamExporter(sys.stdout, name="<stdout>"))
    if cfg.enable_journal:
        from .journal import JournalExporter  # imported here: it builds on Exporter
        exporters.append(JournalExporter(socket_path=os.environ.get(
            "TETRAD_JOURNAL_SOCKET") or JournalExporter.DEFAULT_SOCKET))
    return MultiExporter(exporters)


def _make_dirs(path: str) -> None:
    """Create missing directories with exactly _DIR_MODE, whatever the umask."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, _DIR_MODE)
        except FileExistsError:
            continue  # created concurrently by someone else: leave it as it is
        os.chmod(d, _DIR_MODE)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp_to_ms(stamp: str) -> int:
    dt = datetime.strptime(stamp, _STAMP_FORMAT + ".%f")
    return calendar.timegm(dt.timetuple()) * 1000 + dt.microsecond // 1000
