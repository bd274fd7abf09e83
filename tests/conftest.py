"""Shared fixtures: a real tetrad daemon, started as `tetrad run` in a
subprocess against the running kernel, exporting to a file in tmp_path."""

from __future__ import annotations

import glob
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The kernel lane's guest runs under software emulation: its timeouts are scaled up
# (scripts/kernel-lane/guest-run.sh sets this), and tests that accept an already running
# daemon share one there, because every daemon start compiles BPF (~20 s in the guest).
TIMEOUT_SCALE = float(os.environ.get("KERNEL_LANE_TIMEOUT_SCALE", "1"))
SHARED_DAEMON = os.environ.get("KERNEL_LANE_SHARED_DAEMON") == "1"


def tetrad_cmd() -> list[str]:
    venv = REPO / ".venv" / "bin" / "tetrad"
    if venv.exists():
        return [str(venv)]
    return [sys.executable, "-m", "tetrad"]


def bpf_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(out.stdout or "[]")}


def bpf_prog_ids_of(pid: int) -> set[int]:
    """BPF programs a process holds file descriptors to (from /proc/PID/fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


class Daemon:
    """A running `tetrad run`, its export file and its log."""

    def __init__(self, workdir: Path, extra_args=(), env=None):
        self.workdir = workdir
        self.export = workdir / "events" / "tetrad.log"
        self.sock = workdir / "run" / "tetrad.sock"
        self.status_file = workdir / "run" / "status.json"
        self.log_path = workdir / "daemon.log"
        self.policy_dir = workdir / "policies"
        self.policy_dir.mkdir(exist_ok=True)
        args = tetrad_cmd() + [
            "run", f"--export-filename={self.export}",
            f"--server-address=unix://{self.sock}",
            f"--tracing-policy-dir={self.policy_dir}",
            "--log-level=debug", *extra_args,
        ]
        full_env = dict(os.environ)
        full_env["TETRAD_CONFIG_DIR"] = str(workdir / "etc")   # no host config leaks in
        full_env.update(env or {})
        self.log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self, timeout: float = 60.0) -> None:
        timeout *= TIMEOUT_SCALE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
            if self.status_file.exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def export_files(self) -> list[Path]:
        """Backups oldest first, then the live file."""
        backups = sorted(Path(p) for p in glob.glob(str(self.export.parent / "tetrad-*")))
        return backups + ([self.export] if self.export.exists() else [])

    def events(self) -> list[dict]:
        for _ in range(20):
            try:
                return self._read_events()
            except FileNotFoundError:
                time.sleep(0.05)   # a backup was compressed while we listed them
        return self._read_events()

    def _read_events(self) -> list[dict]:
        out = []
        for path in self.export_files():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as f:
                for line in f:
                    # a line without its newline is still being written: read it next time
                    if line.strip() and line.endswith("\n"):
                        out.append(json.loads(line))
        return out

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "events") -> list[dict]:
        """Poll the export until predicate(events) returns a truthy value."""
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        while True:
            found = predicate(self.events())
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def start_daemon(tmp_path):
    started = []

    def _start(*extra_args, env=None, ready=True) -> Daemon:
        d = Daemon(tmp_path, extra_args, env)
        started.append(d)
        if ready:
            d.wait_ready()
        return d

    yield _start
    for d in started:
        d.stop()


def _daemon_scope(fixture_name, config) -> str:
    return "session" if SHARED_DAEMON else "function"


@pytest.fixture(scope=_daemon_scope)
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("daemon"))
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def accepted(srv) -> int:
    """Connections a non-blocking listening socket has waiting (accepted and closed)."""
    n = 0
    while True:
        try:
            srv.accept()[0].close()
            n += 1
        except BlockingIOError:
            return n


def of_type(events, kind):
    return [e[kind] for e in events if kind in e]


def execs_with(events, marker: str):
    """process_exec events whose arguments contain `marker`."""
    return [e for e in of_type(events, "process_exec") if marker in e["process"].get("arguments", "")]


def exits_of(events, pid: int):
    return [e for e in of_type(events, "process_exit") if e["process"]["pid"] == pid]
