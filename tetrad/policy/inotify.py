"""Watching the policy directory and its subdirectories with inotify
(through libc: the stdlib has no binding).  The watcher says "something
changed" and whether a policy file is still being written (created or
modified, not yet closed); the manager rescans, so every kind of change
(create, write, atomic rename into place, delete, a new subdirectory) is
handled alike."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

from .loader import SUFFIXES

IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_EVENT = struct.Struct("iIII")   # struct inotify_event: wd, mask, cookie, len; then the name
_SUFFIXES = tuple(s.encode() for s in SUFFIXES)


class DirectoryWatcher:
    def __init__(self, directory: str):
        self.directory = directory
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.writing: set[tuple[int, bytes]] = set()   # (watch, name) of policy files open for writing
        self.overflowed = False
        self.rewatch()

    def rewatch(self) -> None:
        """Watch the directory and its direct subdirectories (new ones too;
        adding a watch twice is harmless)."""
        dirs = [self.directory]
        try:
            dirs += [e.path for e in os.scandir(self.directory) if e.is_dir() and not e.name.startswith(".")]
        except OSError:
            pass
        for d in dirs:
            _libc.inotify_add_watch(self.fd, d.encode(), MASK)

    def drain(self) -> bool:
        """Read pending events; True if there were any."""
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            if not data:
                return changed
            changed = True
            self._note(data)

    def complete(self) -> bool:
        """Whether the changes seen so far are whole: no policy file is
        between its creation or a write and its close (a rename into place
        and a delete are whole at once), and no event was lost."""
        return not self.writing and not self.overflowed

    def settled(self) -> None:
        """The directory was read: what was written half-way is read again later anyway."""
        self.writing.clear()
        self.overflowed = False

    def _note(self, data: bytes) -> None:
        off = 0
        while off + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
            name = data[off + _EVENT.size:off + _EVENT.size + length].rstrip(b"\0")
            off += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.overflowed = True
            if mask & IN_ISDIR or name.startswith(b".") or not name.endswith(_SUFFIXES):
                continue
            if mask & (IN_CREATE | IN_MODIFY):
                self.writing.add((wd, name))
            if mask & (IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO):
                self.writing.discard((wd, name))

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)
