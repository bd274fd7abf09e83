"""Work for the event loop from other threads (containerd's and the
Kubernetes API's): queued, and an eventfd in the daemon's epoll wakes the
loop at once, so a new container is in its policies' scope within
milliseconds rather than at the next timeout."""

from __future__ import annotations

import os
import queue


class Inbox:
    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def put(self, item) -> None:
        self._queue.put(item)
        os.eventfd_write(self.fd, 1)

    def drain(self) -> list:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        os.close(self.fd)
