"""Telling systemd how the daemon is doing (sd_notify, for `Type=notify`).

The unit (packaging/systemd/tetrad.service) waits for ``READY=1``, which the
daemon sends only once its probes are attached and its policies loaded, so
`systemctl start tetrad` returns when events are really being captured.
``WATCHDOG=1`` is sent from the event loop itself: if the loop stalls,
systemd kills and restarts the daemon after ``WatchdogSec=``.  A reload
(SIGHUP, `systemctl reload`) is bracketed by ``RELOADING=1`` and ``READY=1``,
a stop announced with ``STOPPING=1``, and ``STATUS=`` carries a one-line
summary that `systemctl status tetrad` shows.

Outside systemd (no ``$NOTIFY_SOCKET``) every method does nothing.
"""

from __future__ import annotations

import logging
import os
import time

import sdnotify

log = logging.getLogger("tetrad.systemd")

# How often STATUS= is refreshed; the events/s figure is averaged over it.
STATUS_EVERY_S = 5.0


def watchdog_interval(env=os.environ) -> float:
    """Seconds between WATCHDOG=1 pings: half of systemd's ``WatchdogSec=``
    (as sd_watchdog_enabled() advises), or 0 when no watchdog is set for us."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0") or 0)
    except ValueError:
        return 0.0
    if usec <= 0 or (pid and pid != os.getpid()):
        return 0.0
    return usec / 2e6


def status_line(status: dict, events_per_s: float) -> str:
    """The STATUS= summary: policies (once the daemon reports them), event
    rate, what was lost in the kernel and in the exporters."""
    parts = []
    if status.get("policies") is not None:   # once the daemon lists them
        parts.append(f"{len(status['policies'])} policies")
    parts.append(f"{events_per_s:.0f} events/s")
    parts.append(f"{sum(status.get('events', {}).values())} events")
    kernel_lost = sum(status.get("lost_in_kernel", {}).values())
    export_lost = sum(e.get("lines_lost", 0)
                      for e in status.get("exporters", {}).get("exporters", []))
    parts.append(f"lost {kernel_lost} in kernel, {export_lost} in export")
    return ", ".join(parts)


class ServiceNotifier:
    """The daemon's side of sd_notify."""

    def __init__(self, env=os.environ) -> None:
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_every = watchdog_interval(env) if self.enabled else 0.0
        self._next_watchdog = 0.0
        self._next_status = 0.0
        self._last_count: tuple[float, int] | None = None
        if self.watchdog_every:
            log.info("systemd watchdog: pinging every %.1fs", self.watchdog_every)

    def _send(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))

    def ready(self, status: str = "") -> None:
        self._send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (>= 253) tell this reload from an older one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping")

    def tick(self, now: float) -> None:
        """Called on every turn of the event loop: pings the watchdog when due."""
        if self.watchdog_every and now >= self._next_watchdog:
            self._send("WATCHDOG=1")
            self._next_watchdog = now + self.watchdog_every

    def refresh_status(self, now: float, get_status) -> None:
        """Sends STATUS= at most every STATUS_EVERY_S, with the event rate
        since the previous one; ``get_status()`` gives the daemon's status."""
        if not self.enabled or now < self._next_status:
            return
        status = get_status()
        total = sum(status.get("events", {}).values())
        rate = 0.0
        if self._last_count is not None and now > self._last_count[0]:
            rate = (total - self._last_count[1]) / (now - self._last_count[0])
        self._last_count = (now, total)
        self._next_status = now + STATUS_EVERY_S
        self._send(f"STATUS={status_line(status, rate)}")
