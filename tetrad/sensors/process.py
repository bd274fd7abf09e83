"""The process sensor: bpf/process.c (exec, clone, exit) on one BPF ring
buffer, its lost-record counters, and its start-up self-test."""

from __future__ import annotations

import ctypes
import logging

from ..bpf_loader import compile_program
from .records import RECORD_NAMES, decode

log = logging.getLogger("tetrad.sensor.process")

PAGE = 4096


def ring_pages(rb_size: int, ncpus: int) -> int:
    """Ring buffer bytes (0 = auto) -> a power-of-two page count."""
    want = rb_size or max(8, 2 * ncpus) * 1024 * 1024  # auto: 2 MiB per CPU, at least 8
    pages = 1
    while pages * PAGE < want:
        pages <<= 1
    return pages


class ProcessSensor:
    SELFTEST_TRACEPOINT = "syscalls:sys_enter_getpgid"

    def __init__(self, macros: dict[str, int], rb_pages: int):
        self.rb_pages = rb_pages
        self.bpf = compile_program("process.c", {**macros, "RB_PAGES": rb_pages})
        self._handler = None

    def open(self, handler) -> None:
        """`handler(record)` is called for every decoded record, from poll()."""
        self._handler = handler

        def _cb(_ctx, data, size):
            handler(decode(ctypes.string_at(data, size)))
            return 0

        self._cb = _cb  # keep a reference: BCC holds only a C pointer to it
        self.bpf[b"events"].open_ring_buffer(_cb)

    def fileno(self) -> int:
        """The ring buffer's fd, for epoll (tetrad/poller.py)."""
        return self.bpf["events"].map_fd

    def consume(self) -> None:
        """Handle every queued record now, without waiting for a wakeup."""
        self.bpf.ring_buffer_consume()

    def poll(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for a wakeup, then take whatever is queued:
        the kernel side wakes us only once per batch of records."""
        self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()

    def lost(self) -> dict[str, int]:
        """Records the kernel could not send, by record type (since load)."""
        table = self.bpf[b"lost_records"]
        out = {}
        for key, per_cpu in table.items():
            total = sum(per_cpu)
            if total:
                out[RECORD_NAMES.get(key.value, str(key.value))] = total
        return out

    def arm_selftest(self, tgid: int) -> None:
        self.bpf[b"selftest_tgid"][ctypes.c_int(0)] = ctypes.c_uint32(tgid)

    def disarm_selftest(self) -> None:
        self.bpf[b"selftest_tgid"][ctypes.c_int(0)] = ctypes.c_uint32(0)
        self.bpf.detach_tracepoint(self.SELFTEST_TRACEPOINT.encode())

    def close(self) -> None:
        self.bpf.cleanup()
