#!/usr/bin/env python3
"""Exec storm: N fork+exec of /bin/true, untraced and under tetrad (default
settings, exporting to a file), in the same run; bpftrace as a peer when it
is installed.  Prints the overhead ratio, events/s, events lost, tetrad's
CPU seconds and peak RSS, and the start-up time to the first event.

    .venv/bin/python benchmarks/exec_storm.py [-n 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TETRAD = [str(REPO / ".venv/bin/tetrad")] if (REPO / ".venv/bin/tetrad").exists() else [sys.executable, "-m", "tetrad"]


def storm(n: int, tag: str) -> float:
    """Seconds for n fork+exec of /bin/true from one shell loop."""
    t0 = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", f'i=0; while [ $i -lt {n} ]; do /bin/true {tag}; i=$((i+1)); done'],
                   check=True)
    return time.perf_counter() - t0


def proc_stat(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, peak RSS bytes, current RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mem = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                mem[line[:5]] = int(line.split()[1]) * 1024
    return cpu, mem["VmHWM"], mem["VmRSS"]


def count_execs(export: Path, tag: str) -> int:
    n = 0
    for path in sorted(export.parent.glob("*")):
        if path.suffix == ".gz":
            continue
        with open(path) as f:
            for line in f:
                if tag in line and '"process_exec"' in line:
                    ev = json.loads(line)
                    if ev["process_exec"]["process"].get("arguments") == tag:
                        n += 1
    return n


class Tetrad:
    def __init__(self, workdir: Path):
        self.export = workdir / "events" / "tetrad.log"
        self.sock = workdir / "run" / "tetrad.sock"
        env = dict(os.environ, TETRAD_CONFIG_DIR=str(workdir / "etc"))
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(TETRAD + ["run", f"--export-filename={self.export}",
                                               "--export-file-max-size-mb=1000",
                                               f"--server-address=unix://{self.sock}",
                                               f"--tracing-policy-dir={workdir / 'policies'}",
                                               # the file export; the journal exporter would count
                                               # every event lost on a host without journald
                                               "--enable-journal=false"],
                                     stderr=open(workdir / "daemon.log", "w"), env=env)
        # start-up: until an exec we run shows up in the export
        tag = f"first-{os.getpid()}"
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"tetrad exited: see {workdir / 'daemon.log'}")
            subprocess.run(["/bin/true", tag])
            if self.export.exists() and tag in self.export.read_text():
                break
            time.sleep(0.02)
        self.startup_s = time.perf_counter() - t0

    def lost(self) -> int:
        status = json.loads((self.sock.parent / "status.json").read_text())
        return sum(status["lost_in_kernel"].values()) + sum(
            e.get("lines_lost", 0) for e in status["exporters"].get("exporters", []))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def bpftrace_storm(n: int, tag: str) -> float | None:
    if not shutil.which("bpftrace"):
        return None
    out = tempfile.NamedTemporaryFile(delete=False)
    bt = subprocess.Popen(["bpftrace", "-B", "full", "-e",
                           'tracepoint:sched:sched_process_exec { printf("%d %s\\n", pid, str(args->filename)); }'],
                          stdout=out, stderr=subprocess.DEVNULL)
    time.sleep(3)   # attach
    secs = storm(n, tag)
    bt.send_signal(signal.SIGINT)
    bt.wait(10)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.n
    work = Path(tempfile.mkdtemp(prefix="tetrad-bench-"))

    storm(200, "warmup")
    untraced = [storm(n, "u") for _ in range(args.rounds)]
    peer = [bpftrace_storm(n, "p") for _ in range(args.rounds)] if shutil.which("bpftrace") else []

    t = Tetrad(work)
    cpu0, _, _ = proc_stat(t.proc.pid)
    traced, tags = [], []
    for r in range(args.rounds):
        tag = f"storm{r}-{os.getpid()}"
        tags.append(tag)
        traced.append(storm(n, tag))
    time.sleep(1.5)   # let the daemon drain and write its status
    cpu1, peak_rss, steady_rss = proc_stat(t.proc.pid)
    lost = t.lost()
    seen = [count_execs(t.export, tag) for tag in tags]
    t.stop()

    base = statistics.median(untraced)
    under = statistics.median(traced)
    events = sum(seen) * 2   # each exec also has its exit
    print(f"exec storm: {n} x fork+exec /bin/true, {args.rounds} rounds, median")
    print(f"  untraced            {base:7.3f} s  ({n / base:7.0f} exec/s)")
    if peer:
        p = statistics.median(peer)
        print(f"  bpftrace (peer)     {p:7.3f} s  ratio {p / base:.3f}")
    print(f"  tetrad              {under:7.3f} s  ratio {under / base:.3f}  ({n / under:7.0f} exec/s)")
    print(f"  tetrad events       {events} ({events / sum(traced):.0f} events/s during the storms)")
    print(f"  exec events seen    {sum(seen)} of {n * args.rounds}; lost (kernel + export) {lost}")
    print(f"  tetrad CPU          {cpu1 - cpu0:.2f} s for {n * args.rounds} execs "
          f"({(cpu1 - cpu0) / (n * args.rounds) * 1e6:.0f} us/exec)")
    print(f"  tetrad RSS          {steady_rss / 2**20:.1f} MiB after the storms "
          f"(peak {peak_rss / 2**20:.1f} MiB, during the in-process BPF compile)")
    print(f"  start-up to first event {t.startup_s:.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
