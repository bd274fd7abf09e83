"""Helpers for the policy tests: a daemon with given policies shared by a
test module, a workload run with a unique marker, and event filters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from conftest import Daemon, REPO, tetrad_cmd

WORKLOAD_PYTHON = "/usr/bin/python3"   # Debian's: a stable binary path for matchBinaries


def start_with_policies(workdir: Path, policies: dict[str, str], timeout: float = 120,
                        extra_args=()) -> Daemon:
    """A daemon (started with `extra_args`) whose policy directory holds `policies`
    (file name -> text), waited for until every policy is loaded or failed."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "policies").mkdir(exist_ok=True)
    for name, text in policies.items():
        (workdir / "policies" / name).write_text(text)
    d = Daemon(workdir, extra_args)
    d.wait_ready(timeout)
    wait_policies(d, len(policies), timeout)
    return d


def status(d: Daemon) -> dict:
    for _ in range(50):
        try:
            return json.loads(d.status_file.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError("no status file")


def wait_policies(d: Daemon, count: int, timeout: float = 60, pred=None) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pols = status(d).get("policies", [])
        if len(pols) >= count and (pred is None or pred(pols)):
            return pols
        time.sleep(0.1)
    raise AssertionError(f"policies not as expected: {status(d).get('policies')}\n{d.log_text()[-3000:]}")


def run_workload(script: str, *args, python: str = WORKLOAD_PYTHON, prefix=(), check=True):
    """Run `script` (Python source) with a unique marker; returns (pid, marker, returncode)."""
    marker = "tetrad-" + uuid.uuid4().hex[:12]
    proc = subprocess.Popen([*prefix, python, "-c", script, marker, *map(str, args)])
    rc = proc.wait(30)
    if check:
        assert rc == 0, f"workload failed with {rc}"
    return proc.pid, marker, rc


def kprobe_events(events, pid: int, message: str | None = None) -> list[dict]:
    out = []
    for e in events:
        body = e.get("process_kprobe")
        if body and body["process"]["pid"] == pid and (message is None or body.get("message") == message):
            out.append(body)
    return out


def int_args(bodies) -> list[int]:
    return [b["args"][0]["int_arg"] for b in bodies]


def settle(d: Daemon, seconds: float = 1.0, quiet: float = 0.6, limit: float = 20.0) -> list[dict]:
    """Events after giving the daemon time to drain and flush: at least
    `seconds`, then until the export has not grown for `quiet` seconds (a
    daemon slowed by a busy machine is waited for, up to `limit`).  Only
    policy events count: other processes' exec/exit events never stop."""
    def policy_events(evs):
        return sum(1 for e in evs if not ("process_exec" in e or "process_exit" in e))

    start = time.monotonic()
    time.sleep(seconds)
    events = d.events()
    still_since = time.monotonic()
    while time.monotonic() - start < limit and time.monotonic() - still_since < quiet:
        time.sleep(0.2)
        now = d.events()
        if policy_events(now) != policy_events(events):
            still_since = time.monotonic()
        events = now
    return events
