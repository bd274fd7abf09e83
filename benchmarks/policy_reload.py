"""Live policy changes: how long until they take effect, and what is lost.

A daemon starts with an empty policy directory while a workload calls
getpgid(1000000 + i) and getpgid(2000000 + i) for i = 0, 1, 2, ..., about
1000 times a second each, and getsid(7001).  Policy files are renamed into the directory (as an editor or
`kubectl cp` does), one step at a time:

  first add        the daemon's first policy, `steady` (getpgid in 2000000:2999999)
then, per round:
  add              `probe` (getpgid in 1000000:1999999, message v1)
  modify values    `probe` with another range and message v2: a change of
                   values only (the same hooks, selectors, operators)
  modify hooks     `probe` with a second hook (getsid): the programs change
  remove           `probe` deleted

Each latency is measured in the kernel's time: from the rename (or unlink)
to the first event of the new configuration (its message tells it apart),
or, for remove, to the last event of the removed policy.  The workload's
sequence numbers show what a change loses (a call with no event) or doubles
(a call with two: old and new programs attached at once); `steady` must not
lose a single call throughout.  Numbers only; nothing is asserted.

    .venv/bin/python benchmarks/policy_reload.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import calendar
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
TETRAD = [str(REPO / ".venv" / "bin" / "tetrad")]
PYTHON = "/usr/bin/python3"
BASE = 1000000
STEADY_BASE = 2000000
SID = 7001

WORKLOAD = """
import os, sys, time
stop = sys.argv[1]
i = 0
while not os.path.exists(stop):
    for v in (%d + i, %d + i):
        try:
            os.getpgid(v)
        except OSError:
            pass
    try:
        os.getsid(%d)
    except OSError:
        pass
    i += 1
    time.sleep(0.001)
""" % (BASE, STEADY_BASE, SID)

HOOK = """  - call: {call}
    syscall: true
    message: "{message}"
    args:
    - index: 0
      type: int
    selectors:
    - matchPIDs:
      - operator: In
        values: [{pid}]
      matchArgs:
      - index: 0
        operator: {op}
        values: ["{value}"]
"""


def policy(name: str, hooks: list[str]) -> str:
    return ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n"
            f"  name: {name}\nspec:\n  kprobes:\n" + "".join(hooks))


def rfc3339_ns(text: str) -> int:
    base, _, frac = text.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


class Daemon:
    def __init__(self, work: Path):
        self.work = work
        self.policies = work / "policies"
        self.policies.mkdir()
        self.export = work / "events.log"
        self.log = work / "daemon.log"
        self.proc = subprocess.Popen(TETRAD + ["run", f"--export-filename={self.export}",
                                               f"--server-address=unix://{work}/run/tetrad.sock",
                                               f"--tracing-policy-dir={self.policies}",
                                               "--export-file-max-size-mb=500"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.monotonic() + 120
        while not (work / "run" / "status.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("the daemon did not start: " + self.log.read_text()[-2000:])
            time.sleep(0.1)
        self._offset = 0
        self.events: list[dict] = []

    def put(self, name: str, text: str) -> int:
        """Rename `text` into the directory as `name`; the time of the rename (ns)."""
        tmp = self.policies / f".{name}.tmp"
        tmp.write_text(text)
        t = time.time_ns()
        os.rename(tmp, self.policies / name)
        return t

    def remove(self, name: str) -> int:
        t = time.time_ns()
        (self.policies / name).unlink()
        return t

    def read(self) -> list[dict]:
        """The policy events exported so far (process_kprobe bodies)."""
        if self.export.exists():
            with open(self.export) as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind("\n") + 1
            self._offset += len(data[:end].encode())
            for line in data[:end].splitlines():
                ev = json.loads(line)
                if "process_kprobe" in ev:
                    body = ev["process_kprobe"]
                    body["t"] = rfc3339_ns(ev["time"])
                    self.events.append(body)
        return self.events

    def wait_for(self, pred, timeout: float = 30) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.read():
                if pred(ev):
                    return ev
            time.sleep(0.02)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def sequence(ev: dict) -> int:
    return ev["args"][0]["int_arg"] % BASE


def getpgid_hook(message: str, pid: int, base: int, upper: int) -> str:
    return HOOK.format(call="sys_getpgid", message=message, pid=pid, op="InRange",
                       value=f"{base}:{base + upper}")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tetrad-reload-"))
    stop = work / "stop"
    load = os.getloadavg()
    daemon = Daemon(work)
    workload = subprocess.Popen([PYTHON, "-c", WORKLOAD, str(stop)], stdout=subprocess.DEVNULL)
    pid = workload.pid
    lat = {k: [] for k in ("first add", "add", "modify values", "modify hooks", "remove")}
    lost = {k: [] for k in ("modify values", "modify hooks")}
    doubled = {k: [] for k in ("modify values", "modify hooks")}
    try:
        def probe(message, upper, sid=False):
            hooks = [getpgid_hook(message, pid, BASE, upper)]
            if sid:
                hooks.append(HOOK.format(call="sys_getsid", message=message + "-sid", pid=pid,
                                         op="Equal", value=SID))
            return policy("probe", hooks)

        def first(message, since):
            ev = daemon.wait_for(lambda e: e.get("message") == message and e["t"] >= since)
            if ev is None:   # printed as inf
                print(f"no {message} event within 30 s", file=sys.stderr)
                return float("inf")
            return (ev["t"] - since) / 1e9

        t = daemon.put("steady.yaml", policy("steady", [getpgid_hook("steady", pid, STEADY_BASE, BASE - 1)]))
        lat["first add"].append(first("steady", t))
        for r in range(args.rounds):
            time.sleep(0.5)
            begun = time.time_ns()
            t = daemon.put("probe.yaml", probe("v1", BASE - 1))
            lat["add"].append(first("v1", t))
            time.sleep(0.5)
            t = daemon.put("probe.yaml", probe("v2", BASE - 2))
            lat["modify values"].append(first("v2", t))
            time.sleep(0.5)
            t = daemon.put("probe.yaml", probe("v3", BASE - 3, sid=True))
            lat["modify hooks"].append(first("v3-sid", t))
            time.sleep(0.5)
            t = daemon.remove("probe.yaml")
            time.sleep(1.5)
            daemon.read()
            tail = [e["t"] for e in daemon.events if e.get("message", "").startswith("v") and e["t"] >= t]
            lat["remove"].append((max(tail) - t) / 1e9 if tail else 0.0)
            # sequence numbers around each modify: every call once, none twice
            seqs = {m: [sequence(e) for e in daemon.events if e.get("message") == m and e["t"] >= begun]
                    for m in ("v1", "v2", "v3")}
            for kind, old, new in (("modify values", "v1", "v2"), ("modify hooks", "v2", "v3")):
                if not seqs[new]:
                    continue
                both = seqs[old] + seqs[new]
                span = set(range(min(seqs[new]) - 100, min(seqs[new]) + 100))
                window = [s for s in both if s in span]
                lost[kind].append(len(span - set(window)))
                doubled[kind].append(len(window) - len(set(window)))
            daemon.events = [e for e in daemon.events if e.get("message") == "steady"]
    finally:
        stop.touch()
        workload.wait(10)
        time.sleep(1.5)
        daemon.read()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    steady = [sequence(e) for e in daemon.events if e.get("message") == "steady"]

    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'step':15s} {'median':>8s} {'min':>7s} {'max':>7s}   runs (s)")
    for k, xs in lat.items():
        print(f"{k:15s} {statistics.median(xs):8.3f} {min(xs):7.3f} {max(xs):7.3f}   "
              + " ".join(f"{x:.3f}" for x in xs))
    for k in lost:
        print(f"{k}: calls without an event around the change {lost[k]}, calls with two {doubled[k]}")
    span = max(steady) - min(steady) + 1
    print(f"steady (unchanged throughout): {len(set(steady))} of the {span} calls from its first event "
          f"to its last had one, {len(steady) - len(set(steady))} had two")


if __name__ == "__main__":
    main()
