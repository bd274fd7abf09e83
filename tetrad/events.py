"""Building events in Tetragon's JSON shape (GetEventsResponse): the event
object under its type key, then `node_name` and `time`."""

from __future__ import annotations

import signal as _signal

from .process.model import Process
from .timefmt import KtimeClock, rfc3339


def signal_name(signo: int) -> str:
    try:
        return _signal.Signals(signo).name
    except ValueError:
        if _signal.SIGRTMIN <= signo <= _signal.SIGRTMAX:
            return f"SIGRTMIN+{signo - _signal.SIGRTMIN}" if signo != _signal.SIGRTMIN else "SIGRTMIN"
        return f"SIG{signo}"


class EventBuilder:
    def __init__(self, node_name: str, clock: KtimeClock, host_ns: tuple = (),
                 with_creds: bool = True, with_ns: bool = True):
        self.node_name = node_name
        self.clock = clock
        self.host_ns = host_ns
        self.with_creds = with_creds
        self.with_ns = with_ns

    def process_json(self, proc: Process) -> dict:
        return proc.to_json(self.host_ns, self.with_creds, self.with_ns)

    def _wrap(self, kind: str, body: dict, ktime: int) -> dict:
        return {kind: body, "node_name": self.node_name,
                "time": rfc3339(self.clock.to_wall_ns(ktime))}

    def _with_parent(self, proc: Process, parent: Process | None) -> dict:
        body = {"process": self.process_json(proc)}
        if parent is not None:
            body["parent"] = self.process_json(parent)
        return body

    def process_exec(self, proc: Process, parent: Process | None) -> dict:
        return self._wrap("process_exec", self._with_parent(proc, parent), proc.ktime)

    def process_exit(self, proc: Process, parent: Process | None, exit_code: int, ktime: int) -> dict:
        body = self._with_parent(proc, parent)
        signo = exit_code & 0x7F
        if signo:
            body["signal"] = signal_name(signo)
        status = (exit_code >> 8) & 0xFF
        if status:
            body["status"] = status
        when = rfc3339(self.clock.to_wall_ns(ktime))
        body["time"] = when
        return {"process_exit": body, "node_name": self.node_name, "time": when}
