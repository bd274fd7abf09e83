"""Waiting on several BPF ring buffers (and other fds) at once.

Each BCC object has its own ring buffer; the process sensor and every loaded
policy are separate objects.  One level-triggered epoll over their ring
buffers' map fds wakes the daemon when any has data; each ready source is
then drained without blocking, so no source waits behind another's timeout.
"""

from __future__ import annotations

import select


class Poller:
    def __init__(self):
        self._epoll = select.epoll()
        self._callbacks: dict[int, object] = {}

    def register(self, fd: int, callback) -> None:
        """`callback()` drains `fd` without blocking when it is readable."""
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def unregister(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    def wait(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for any source, then drain the ready ones (in
        registration order, so process records come before policy records)."""
        ready = {fd for fd, _ in self._epoll.poll(timeout_ms / 1000)}
        for fd, cb in list(self._callbacks.items()):
            # after a quiet wait, drain every source: producers batch their
            # wakeups (bpf/process.c wakes us once per 64 records), so records
            # may be queued without the fd being ready
            if fd in ready or not ready:
                cb()
        return len(ready)

    def close(self) -> None:
        self._epoll.close()
