"""File I/O under the `sys-read-follow-prefix` example policy: where the time goes.

Each workload runs in a pid namespace entered with nsenter, as `kubectl exec`
runs a command in a pod: the example's matchPIDs (NotIn [1], isNamespacePID)
only ever matches such processes, so on the host nothing would be followed and
the "tracked" runs would measure nothing.  Workloads:

  loop untracked   open/read/close of a 100-byte file outside /etc/ (Python, ns per iteration)
  loop tracked     the same on /etc/hostname: 3 events per iteration (open, read, close)
  tar untracked    `tar cf - /usr/share/doc | cat`, 4 passes: real files, about 110k
                   syscalls per pass (reads, writes, opens, stats) (ms per run)
  tar tracked      `tar cf - /etc | cat`, 40 passes: every file of /etc followed and
                   its reads reported (unpaced: more than the daemon can export)

tar's figures are given twice: wall-clock, and the CPU time of tar, cat and
the shell (user + system, where the BPF programs' time lands); tar and cat
run on the two cores at once, so each measures what the other misses.

and four configurations, measured in rounds (the daemon started afresh for
each) so that the drift of a shared machine hits them alike:

  untraced         no BPF program attached
  hook floor       an empty BPF program attached to every attach point tetrad uses
                   for the policy (`tracingpolicy list`): what the hooks cost by
                   themselves, whatever the program does
  raw_syscalls floor  an empty program on the raw tracepoints raw_syscalls:sys_enter
                   and sys_exit instead: the cheaper-looking alternative, which
                   every syscall of every task runs
  tetrad           the daemon with the policy loaded, exporting to a file

It prints the time of each, the ratios against untraced, the events exported
and the records lost in the kernel, then a storm paced to 20,000 matching
events/s (lost records) and the time from a new policy file to its first
event.  Numbers only; nothing is asserted.

    .venv/bin/python benchmarks/policy_file_io.py [--runs 5] [--iterations 100000] [--bpf-stats]

--bpf-stats also prints the time each of the daemon's BPF programs takes per
run on the untracked loop and one untracked tar pass (kernel.bpf_stats_enabled
is set for those runs, then cleared; it needs bpftool; each run's figure
includes about 30 ns of the accounting itself, as an empty program shows).

BENCH_POLICY=file runs it under another policy (the daemon rejects unknown
TETRAD_* variables, hence the name).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TETRAD = [str(REPO / ".venv" / "bin" / "tetrad")]
POLICY = Path(os.environ.get("BENCH_POLICY", REPO / "etc" / "tetrad" / "examples" / "sys_read_follow_prefix.yaml"))
PYTHON = "/usr/bin/python3"
TRACKED = "/etc/hostname"

LOOP = """
import os, sys, time
path, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.perf_counter_ns()
for i in range(n):
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 4096)
    os.close(fd)
    if rate and i % 100 == 99:   # paced: iteration i is due at start + i / rate
        ahead = start / 1e9 + i / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
print((time.perf_counter_ns() - start) / n)
"""
EVENTS_PER_ITERATION = 3    # fd_install (FollowFD), sys_read, sys_close (UnfollowFD)
TARGET_EVENTS_PER_S = 20000
EMPTY_PROGRAM = "int empty(void *ctx) { return 0; }"
EMPTY_RAW_PROGRAM = "int empty_raw(struct bpf_raw_tracepoint_args *ctx) { return 0; }"
RAW_SYSCALLS = ("sys_enter", "sys_exit")


class Pod:
    """A pid namespace whose init sleeps; commands enter it with nsenter."""

    def __init__(self):
        self.holder = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "3600"],
                                       stderr=subprocess.DEVNULL)
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            if time.monotonic() > deadline:
                sys.exit("unshare did not start its child")
            time.sleep(0.02)
        self.init = int(children.read_text().split()[0])

    def run(self, argv: list[str]) -> str:
        return subprocess.run(["nsenter", "-t", str(self.init), "-p", *argv],
                              capture_output=True, text=True, check=True).stdout

    def close(self) -> None:
        os.kill(self.init, signal.SIGKILL)
        self.holder.wait(10)


class Workloads:
    def __init__(self, pod: Pod, work: Path, iterations: int):
        self.pod = pod
        self.iterations = iterations
        self.untracked = work / "untracked.txt"
        self.untracked.write_text("x" * 100)

    def loop(self, path: str, iterations: int | None = None, rate: float = 0) -> float:
        """ns per open/read/close iteration."""
        return float(self.pod.run([PYTHON, "-c", LOOP, path, str(iterations or self.iterations), str(rate)]))

    def tar(self, directory: str, passes: int) -> tuple[float, float]:
        """(wall-clock, CPU) seconds to archive `directory` `passes` times into a pipe."""
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        self.pod.run(["sh", "-c", f"for i in $(seq {passes}); do tar cf - {directory} 2>/dev/null; done "
                                  "| cat > /dev/null"])
        r1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        return t1 - t0, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime

    def all(self) -> dict:
        return {
            "loop untracked": lambda: self.loop(str(self.untracked)),
            "loop tracked": lambda: self.loop(TRACKED),
            "tar untracked": lambda: self.tar("/usr/share/doc", 4),
            "tar tracked": lambda: self.tar("/etc", 40),
        }


class Daemon:
    def __init__(self, work: Path, policy_text: str):
        self.work = work
        (work / "policies").mkdir(exist_ok=True)
        (work / "policies" / POLICY.name).write_text(policy_text)
        self.export = work / "events.log"
        self.proc = subprocess.Popen(TETRAD + ["run", f"--export-filename={self.export}",
                                               f"--server-address=unix://{work}/run/tetrad.sock",
                                               f"--tracing-policy-dir={work}/policies",
                                               "--export-file-max-size-mb=100",
                                               "--export-file-max-backups=1"],
                                     stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "w"))
        deadline = time.monotonic() + 120
        while not self.policies() or any(p["state"] != "loaded" for p in self.policies()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit("the daemon did not load the policy: " + (work / "daemon.log").read_text()[-2000:])
            time.sleep(0.2)

    def status(self) -> dict:
        try:
            return json.loads((self.work / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def policies(self) -> list[dict]:
        return self.status().get("policies") or []

    def counters(self) -> tuple[int, int, float]:
        """(process_kprobe events, policy records lost in the kernel, daemon CPU seconds)."""
        st = self.status()
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return (st.get("events", {}).get("process_kprobe", 0),
                sum(p.get("lost", 0) for p in st.get("policies", [])), cpu)

    def quiet(self) -> tuple[int, int, float]:
        """Counters once the daemon has exported what the workload produced
        (the status file is rewritten about once a second); at most 15 s, since
        other processes of the machine may produce events all along."""
        last = self.counters()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(1.5)
            now = self.counters()
            if now[:2] == last[:2]:
                break
            last = now
        return now

    def export_position(self) -> tuple[int, int]:
        st = self.export.stat()
        return st.st_ino, st.st_size

    def exported_since(self, position: tuple[int, int], text: str) -> bool:
        """Whether `text` was exported after `position` (the file may have rotated)."""
        with open(self.export) as f:
            if os.fstat(f.fileno()).st_ino == position[0]:
                f.seek(position[1])
            return text in f.read()

    def attach_points(self) -> list[str]:
        out = subprocess.run(TETRAD + ["tracingpolicy", "list", "-o", "json",
                                       f"--server-address=unix://{self.work}/run/tetrad.sock"],
                             capture_output=True, text=True, check=True).stdout
        policies = json.loads(out)
        # bpf/policy.c names a hook's programs by its position: hook<n>_enter/exit
        self.hook_names = {f"hook{n}": h["hook"] for n, h in enumerate(policies[0].get("hooks", []))}
        return sorted({a for p in policies for h in p.get("hooks", []) for a in h["attach"]})

    def bpf_stats(self, workload) -> dict[str, tuple[float, int]]:
        """ns per run of each of the daemon's BPF programs during `workload()`."""
        def programs():
            ids = set()
            for fd in os.listdir(f"/proc/{self.proc.pid}/fdinfo"):
                try:
                    ids |= {int(line.split()[1]) for line in open(f"/proc/{self.proc.pid}/fdinfo/{fd}")
                            if line.startswith("prog_id:")}
                except OSError:
                    pass
            shown = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True,
                                              text=True, check=True).stdout)
            return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in shown if p["id"] in ids}

        subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
        try:
            before = programs()
            workload()
            after = programs()
        finally:
            subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
        out = {}   # name: (ns per run, runs)
        for name, (ns, runs) in after.items():
            ns0, runs0 = before.get(name, (0, 0))
            if runs - runs0 > 0:
                out[name] = ((ns - ns0) / (runs - runs0), runs - runs0)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


class Floor:
    """An empty BPF program on each of tetrad's attach points (tracepoints
    here), or on raw_syscalls' sys_enter and sys_exit, the alternative: two
    raw tracepoints that every syscall of every task runs."""

    def __init__(self, points: list[str]):
        from bcc import BPF
        if any(not p.startswith("tracepoint ") for p in points):
            sys.exit(f"the hook floor measures tracepoints only; the policy attached {points}")
        self.points = [p.split(" ", 1)[1] for p in points]
        self.bpf = BPF(text=EMPTY_PROGRAM + "\n" + EMPTY_RAW_PROGRAM)

    def attach(self, raw: bool = False) -> None:
        if raw:
            for tp in RAW_SYSCALLS:
                self.bpf.attach_raw_tracepoint(tp=tp, fn_name="empty_raw")
        for tp in [] if raw else self.points:
            self.bpf.attach_tracepoint(tp=tp, fn_name="empty")

    def detach(self, raw: bool = False) -> None:
        if raw:
            for tp in RAW_SYSCALLS:
                self.bpf.detach_raw_tracepoint(tp=tp)
        for tp in [] if raw else self.points:
            self.bpf.detach_tracepoint(tp=tp)


def median(xs):
    return statistics.median(xs)


def main() -> None:
    # a SIGTERM unwinds like ^C, so that the daemon, the pod and the files go
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5, help="runs of each workload per configuration")
    ap.add_argument("--iterations", type=int, default=100000, help="iterations of the Python loop per run")
    ap.add_argument("--bpf-stats", action="store_true", help="time each BPF program on the untracked loop")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tetrad-bench-"))
    pod = Pod()
    loads = Workloads(pod, work, args.iterations)
    names = list(loads.all())
    results = {c: {n: [] for n in names} for c in ("untraced", "floor", "raw floor", "tetrad")}
    events, lost, cpu = ({n: 0 for n in names} for _ in range(3))
    try:
        for name, fn in loads.all().items():   # warm the page cache and the binaries
            fn()
        # rounds of every configuration, so that the machine's drift (other
        # work on it) hits them alike: the daemon is started for each round
        floor = None
        for _ in range(args.runs):
            daemon = Daemon(work, POLICY.read_text())
            try:
                points = daemon.attach_points()
                for name, fn in loads.all().items():
                    before = daemon.quiet()
                    results["tetrad"][name].append(fn())
                    after = daemon.quiet()
                    for total, a, b in zip((events, lost, cpu), after, before):
                        total[name] += a - b
            finally:
                daemon.stop()
            floor = floor or Floor(points)
            for name, fn in loads.all().items():
                results["untraced"][name].append(fn())
                for config, raw in (("floor", False), ("raw floor", True)):
                    floor.attach(raw)
                    try:
                        results[config][name].append(fn())
                    finally:
                        floor.detach(raw)

        daemon = Daemon(work, POLICY.read_text())
        try:
            daemon.attach_points()
            stats = {}
            if args.bpf_stats:
                stats["untracked loop"] = daemon.bpf_stats(loads.all()["loop untracked"])
                stats["untracked tar, one pass"] = daemon.bpf_stats(lambda: loads.tar("/usr/share/doc", 1))
            hook_names = daemon.hook_names
            # paced: TARGET_EVENTS_PER_S matching events per second in the pod
            before = daemon.quiet()
            t0 = time.monotonic()
            paced_rate = TARGET_EVENTS_PER_S / EVENTS_PER_ITERATION
            loads.loop(TRACKED, int(paced_rate * 5), paced_rate)
            paced_s = time.monotonic() - t0
            after = daemon.quiet()
            paced_events, paced_lost = after[0] - before[0], after[1] - before[1]

            # reload latency: a new policy file until its first event (a light workload)
            probe = POLICY.read_text().replace("sys-read-follow-prefix", "latency-probe")
            start = daemon.export_position()
            t1 = time.monotonic()
            (work / "policies" / "latency.yaml").write_text(probe)
            latency = None
            while time.monotonic() - t1 < 20 and latency is None:
                loads.loop(TRACKED, 50)
                if daemon.exported_since(start, '"policy_name":"latency-probe"'):
                    latency = time.monotonic() - t1
        finally:
            daemon.stop()
    finally:
        pod.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"policy {POLICY.name}; attach points: {', '.join(p.split(':')[-1] for p in points)}")
    print(f"{args.runs} rounds of every configuration, median (min); loop in ns per open/read/close, "
          f"tar in ms; events, lost and daemon CPU summed over the rounds")
    print(f"{'workload':17s} {'untraced':>16s} {'hook floor':>24s} {'raw_syscalls floor':>24s} "
          f"{'tetrad':>24s} {'events':>8s} {'lost':>7s} {'daemon CPU':>10s}")
    for name in names:
        # tar's runs are (wall-clock, CPU): a row for each
        for row, part in ((name, None),) if name.startswith("loop") else ((name, 0), (name + " CPU", 1)):
            scale = 1 if part is None else 1000
            series = {c: [x if part is None else x[part] for x in results[c][name]] for c in results}
            base = median(series["untraced"])

            def cell(xs):
                return f"{median(xs) * scale:8.0f} ({min(xs) * scale:.0f})"

            def ratio(xs):
                return f"{median(xs) / base:.3f}x"

            counts = f"{events[name]:8,d} {lost[name]:7,d} {cpu[name]:9.2f}s" if part != 1 else ""
            print(f"{row:17s} {cell(series['untraced']):>16s} "
                  f"{cell(series['floor']) + ' ' + ratio(series['floor']):>24s} "
                  f"{cell(series['raw floor']) + ' ' + ratio(series['raw floor']):>24s} "
                  f"{cell(series['tetrad']) + ' ' + ratio(series['tetrad']):>24s} {counts}")
    for workload, programs in stats.items():
        per = args.iterations if workload.endswith("loop") else 0
        total = sum(ns * runs for ns, runs in programs.values())
        print(f"BPF programs on the {workload}, ns per run"
              + (f" (in all {total / per:.0f} ns per iteration):" if per else f" (in all {total / 1e6:.1f} ms):"))
        for name, (ns, runs) in sorted(programs.items()):
            hook = hook_names.get(name.rsplit("_", 1)[0], "")
            times = f"x {runs / per:.2f} per iteration" if per else f"x {runs:,}"
            print(f"  {name:36s} {hook:20s} {ns:7.1f} ns {times}")
    print(f"paced:  {paced_events:,} process_kprobe exported in {paced_s:.1f}s of a loop in the pod paced "
          f"to {TARGET_EVENTS_PER_S:,} matching events/s ({paced_events / paced_s:,.0f}/s); "
          f"lost in kernel: {paced_lost:,}")
    print("reload: new policy file to its first exported event: "
          + (f"{latency:.2f}s" if latency is not None else "none within 20s"))


if __name__ == "__main__":
    main()
