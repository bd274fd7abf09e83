"""File-I/O storm under the `sys-read-follow-prefix` example policy.

Runs an open/read/close loop on a path the policy follows (/etc/hostname)
and on one it does not (a file in a temporary directory), first with no
daemon, then with a daemon that has the policy loaded; prints the overhead
ratio of each against the untraced run, the matching events per second the
daemon exported, the records lost in the kernel, and how long a new policy
file takes to produce its first event.  Numbers only; nothing is asserted.

    .venv/bin/python benchmarks/policy_file_io.py [seconds]

BENCH_POLICY=file runs it under another policy (the daemon rejects unknown
TETRAD_* variables, hence the name).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TETRAD = [str(REPO / ".venv" / "bin" / "tetrad")]
POLICY = Path(os.environ.get("BENCH_POLICY", REPO / "etc" / "tetrad" / "examples" / "sys_read_follow_prefix.yaml"))
TRACKED = "/etc/hostname"

LOOP = """
import os, sys, time
path, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
n = 0
start = time.perf_counter()
end = start + seconds
while time.perf_counter() < end:
    for _ in range(100):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
    n += 100
    if rate:   # paced: n iterations are due at start + n / rate
        ahead = start + n / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
print(n)
"""
EVENTS_PER_ITERATION = 3    # fd_install (FollowFD), sys_read, sys_close
TARGET_EVENTS_PER_S = 20000


def storm(path: str, seconds: float, rate: float = 0) -> float:
    """open/read/close iterations per second (`rate`: paced to that many)."""
    out = subprocess.run(["/usr/bin/python3", "-c", LOOP, path, str(seconds), str(rate)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout) / seconds


def median_rate(path: str, seconds: float, runs: int = 3) -> float:
    rates = sorted(storm(path, seconds) for _ in range(runs))
    return rates[len(rates) // 2]


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    work = Path(tempfile.mkdtemp(prefix="tetrad-bench-"))
    untracked = work / "untracked.txt"
    untracked.write_text("x" * 100)
    base_tracked = median_rate(TRACKED, seconds)
    base_untracked = median_rate(str(untracked), seconds)

    (work / "policies").mkdir()
    (work / "policies" / POLICY.name).write_text(POLICY.read_text())
    export = work / "events.log"
    daemon = subprocess.Popen(TETRAD + ["run", f"--export-filename={export}",
                                        f"--server-address=unix://{work}/run/tetrad.sock",
                                        f"--tracing-policy-dir={work}/policies",
                                        "--export-file-max-size-mb=1000"],
                              stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while not (work / "run" / "status.json").exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not start; see {work}/daemon.log")
            time.sleep(0.1)
        traced_untracked = median_rate(str(untracked), seconds)
        traced_tracked = median_rate(TRACKED, seconds)
        time.sleep(2)
        lost_unpaced = sum(p.get("lost", 0) for p in status(work / "run")["policies"])

        # paced: TARGET_EVENTS_PER_S matching events per second
        before = status(work / "run")
        t0 = time.monotonic()
        storm(TRACKED, seconds, TARGET_EVENTS_PER_S / EVENTS_PER_ITERATION)
        elapsed = time.monotonic() - t0
        time.sleep(2)
        after = status(work / "run")
        events = after["events"].get("process_kprobe", 0) - before["events"].get("process_kprobe", 0)
        lost = sum(p.get("lost", 0) for p in after["policies"]) - lost_unpaced

        # reload latency: a new policy file until its first event (a light workload)
        time.sleep(2)
        probe = POLICY.read_text().replace("sys-read-follow-prefix", "latency-probe")
        t1 = time.monotonic()
        (work / "policies" / "latency.yaml").write_text(probe)
        latency = None
        with open(export) as f:
            f.seek(0, os.SEEK_END)
            while time.monotonic() - t1 < 20 and latency is None:
                storm(TRACKED, 0.05, 1000)
                if '"policy_name":"latency-probe"' in f.read():   # what was appended since
                    latency = time.monotonic() - t1
    finally:
        daemon.terminate()
        daemon.wait(10)

    print(f"untraced:  tracked path {base_tracked:,.0f} it/s, untracked path {base_untracked:,.0f} it/s")
    print(f"traced:    tracked path {traced_tracked:,.0f} it/s, untracked path {traced_untracked:,.0f} it/s")
    print(f"overhead:  untracked path {base_untracked / traced_untracked:.3f}x, "
          f"tracked path {base_tracked / traced_tracked:.3f}x")
    print(f"unpaced:   policy records lost in the kernel during the unpaced storms: {lost_unpaced:,}")
    print(f"paced:     {events:,} process_kprobe exported in {elapsed:.1f}s of a storm paced to "
          f"{TARGET_EVENTS_PER_S:,} matching events/s ({events / elapsed:,.0f}/s, other processes' "
          f"closes included); lost in kernel: {lost:,}")
    print(f"reload:    new policy file to its first exported event: "
          + (f"{latency:.2f}s" if latency is not None else "none within 20s"))


if __name__ == "__main__":
    main()
