"""Building events in Tetragon's JSON shape (GetEventsResponse): the event
object under its type key, then `node_name` and `time`."""

from __future__ import annotations

import json
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


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class EventBuilder:
    """Builds each event twice over: as a dict (for filters and renderers)
    and as its JSON line, assembled from the processes' cached serialized
    objects so that the hot path never re-encodes a parent."""

    def __init__(self, node_name: str, clock: KtimeClock, host_ns: tuple = (),
                 with_creds: bool = True, with_ns: bool = True):
        self.node_name = node_name
        self.clock = clock
        self.host_ns = host_ns
        self.with_creds = with_creds
        self.with_ns = with_ns
        self._node_text = _encode(node_name)

    def process_json(self, proc: Process) -> dict:
        return proc.to_json(self.host_ns, self.with_creds, self.with_ns)

    def process_text(self, proc: Process) -> str:
        return proc.to_text(self.host_ns, self.with_creds, self.with_ns)

    def _body(self, proc: Process, parent: Process | None) -> tuple[dict, str]:
        body = {"process": self.process_json(proc)}
        text = '{"process":' + self.process_text(proc)
        if parent is not None:
            body["parent"] = self.process_json(parent)
            text += ',"parent":' + self.process_text(parent)
        return body, text

    def _wrap(self, kind: str, body: dict, body_text: str, when: str) -> tuple[dict, str]:
        event = {kind: body, "node_name": self.node_name, "time": when}
        line = f'{{"{kind}":{body_text}}},"node_name":{self._node_text},"time":"{when}"}}'
        return event, line

    def process_exec(self, proc: Process, parent: Process | None) -> tuple[dict, str]:
        body, text = self._body(proc, parent)
        return self._wrap("process_exec", body, text, proc.start_time)

    def process_exit(self, proc: Process, parent: Process | None, exit_code: int,
                     ktime: int) -> tuple[dict, str]:
        body, text = self._body(proc, parent)
        signo = exit_code & 0x7F
        if signo:
            body["signal"] = signal_name(signo)
            text += f',"signal":"{body["signal"]}"'
        status = (exit_code >> 8) & 0xFF
        if status:
            body["status"] = status
            text += f',"status":{status}'
        when = rfc3339(self.clock.to_wall_ns(ktime))
        body["time"] = when
        text += f',"time":"{when}"'
        return self._wrap("process_exit", body, text, when)
