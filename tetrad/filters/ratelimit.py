"""The export rate limit (Tetragon's `--export-rate-limit`, events per
minute): a token bucket holding at most one minute's worth, refilled
continuously.  Dropped events are counted; `take_report()` returns how many
since the last report, which the daemon announces as a `rate_limit_info`
event once per interval, as Tetragon does."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, per_interval: int, interval_s: float = 60.0, clock=time.monotonic):
        self.capacity = float(per_interval)
        self.rate = per_interval / interval_s
        self.interval_s = interval_s
        self.clock = clock
        self.tokens = self.capacity
        self.last = clock()
        self.dropped_total = 0
        self._unreported = 0
        self._next_report = self.last + interval_s

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped_total += 1
        self._unreported += 1
        return False

    def take_report(self) -> int:
        """Events dropped since the last report, once per interval (else 0)."""
        now = self.clock()
        if now < self._next_report:
            return 0
        self._next_report = now + self.interval_s
        dropped, self._unreported = self._unreported, 0
        return dropped
