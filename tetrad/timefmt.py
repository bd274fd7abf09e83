"""Kernel time (bpf_ktime_get_ns, CLOCK_MONOTONIC) to wall clock and to the
RFC 3339 text that Tetragon's protobuf JSON encoding produces."""

from __future__ import annotations

import time


class KtimeClock:
    """Converts monotonic nanoseconds to Unix-epoch nanoseconds.

    The offset is re-read on `refresh()` so that NTP steps of the wall clock
    are followed (the daemon refreshes it periodically)."""

    def __init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def to_wall_ns(self, ktime_ns: int) -> int:
        return ktime_ns + self.offset_ns

    def now_ktime(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


_last_second = [None, ""]


def rfc3339(epoch_ns: int) -> str:
    """protojson's Timestamp format: UTC, 0, 3, 6 or 9 fractional digits."""
    secs, nanos = divmod(epoch_ns, 1_000_000_000)
    if _last_second[0] != secs:   # events come in bursts within one second
        _last_second[:] = secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    base = _last_second[1]
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{base}.{nanos // 1_000:06d}Z"
    return f"{base}.{nanos:09d}Z"
