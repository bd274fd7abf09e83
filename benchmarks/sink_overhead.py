"""Cost per event of what the daemon's sink does besides writing: redaction,
counters, offering the event to API clients, export allow/deny lists, field
filters and the rate limit.  Prints microseconds per event for a few set-ups
(run: .venv/bin/python benchmarks/sink_overhead.py)."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tetrad.api import protocol                      # noqa: E402
from tetrad.api.server import ApiServer              # noqa: E402
from tetrad.filters.export import ExportControls     # noqa: E402
from tetrad.metrics import EventStats                # noqa: E402

EVENT = {"process_exec": {
    "process": {"exec_id": "dm06MTIzNDU2Nzg5MDoxMjM0", "pid": 1234, "uid": 0, "cwd": "/root",
                "binary": "/usr/bin/curl", "arguments": "-s https://example.com --password=x",
                "flags": "execve clone", "start_time": "2024-01-01T00:00:00.123456789Z", "auid": 0,
                "parent_exec_id": "dm06MTIzNDU2Nzg5MDoxMjMz", "tid": 1234},
    "parent": {"exec_id": "dm06MTIzNDU2Nzg5MDoxMjMz", "pid": 1233, "binary": "/bin/bash", "tid": 1233}},
    "node_name": "vm", "time": "2024-01-01T00:00:00.123456789Z"}
LINE = json.dumps(EVENT, separators=(",", ":"))
N = 50_000


def cfg(**kw):
    base = dict(export_allowlist="", export_denylist="", field_filters="", redaction_filters="",
                export_rate_limit=-1, export_rate_limit_interval="1m")
    base.update(kw)
    return SimpleNamespace(**base)


def run(name, controls, api=None):
    stats = EventStats()
    t0 = time.perf_counter()
    for _ in range(N):
        ev = {"process_exec": dict(EVENT["process_exec"]), "node_name": "vm", "time": EVENT["time"]}
        line = controls.redact(ev, LINE)
        stats.count("process_exec", ev)
        if api is not None:
            api.publish("process_exec", ev, line)
        controls.select(ev, line)
    us = (time.perf_counter() - t0) / N * 1e6
    print(f"{name:<58} {us:6.2f} us/event")


def main():
    run("no controls, no clients", ExportControls(cfg()))
    run("allowlist + denylist (2 regex keys)", ExportControls(cfg(
        export_allowlist='{"binary_regex": ["curl", "wget"], "event_set": ["PROCESS_EXEC"]}',
        export_denylist='{"namespace": ["kube-system"]}')))
    run("redaction (binary regex + redact regex)", ExportControls(cfg(
        redaction_filters='{"binary_regex": ["curl"], "redact": ["--password[= ](\\\\S+)"]}')))
    run("field filter INCLUDE process.binary,process.pid", ExportControls(cfg(
        field_filters='{"fields": "process.binary,process.pid", "action": "INCLUDE"}')))
    run("rate limit (never reached)", ExportControls(cfg(export_rate_limit=10**9)))
    with tempfile.TemporaryDirectory() as d:
        api = ApiServer(f"unix://{d}/b.sock", queue_events=N + 1)
        api.start()
        s = socket.socket(socket.AF_UNIX)
        s.connect(f"{d}/b.sock")
        s.sendall(protocol.encode({"op": "getevents", "args": {"allow_list": [{"binary_regex": ["nomatch"]}]}}))
        s.recv(100)
        while not api.stats()["subscribers"]:
            time.sleep(0.01)
        run("no controls, one filtered getevents client (publish only)", ExportControls(cfg()), api)
        s.close()
        api.stop()


if __name__ == "__main__":
    main()
