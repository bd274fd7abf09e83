#!/usr/bin/env python3
"""Scoped policies and new containers: is a container's very first process
covered, and with how much margin?

A real containerd (the test suite's, tests/containerd_env.py) starts N pods
(sandbox, then one container) while a daemon runs two policies: one scoped to
whole pods (podSelector: the pod's cgroup, known from the sandbox) and one to
containers (containerSelector: the container's cgroup, known at its task's
creation).  Each container's main process calls chdir() as its first action.
Printed per policy: how many first actions were reported, and the margin
between the scope update that covered the container (the daemon's log line)
and the container's first exec.

    .venv/bin/python benchmarks/scope_window.py [-n 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Daemon  # noqa: E402
from containerd_env import Containerd, Pod  # noqa: E402
from policytools import wait_policies  # noqa: E402

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  podSelector:
    matchLabels:
      bench: scope-window
{containers}  kprobes:
  - call: sys_chdir
    syscall: true
    args:
    - index: 0
      type: string
    selectors:
    - matchArgs:
      - index: 0
        operator: Prefix
        values: ["/tmp/first-"]
"""
APPLIED = re.compile(r"^(\S+ \S+) INFO tetrad.policy: policy (\S+) applies to (\d+) cgroup")
SCOPES = {"whole-pods": "", "containers": "  containerSelector:\n    matchLabels:\n      name: first\n"}


def wall(text: str) -> float:
    """An RFC 3339 time with nanoseconds, or the log's "2026-01-02 03:04:05,678", as epoch seconds."""
    if "T" in text:
        base, _, frac = text.rstrip("Z").partition(".")
        return datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + (frac or "0"))
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ctd = Containerd(work / "containerd")
        ctd.start()
        ctd.import_busybox()
        (work / "daemon").mkdir()
        d = Daemon(work / "daemon", [f"--containerd-address={ctd.socket}"])
        pods = []
        try:
            d.wait_ready()
            for name, containers in SCOPES.items():
                (d.policy_dir / f"{name}.yaml").write_text(POLICY.format(name=name, containers=containers))
            wait_policies(d, 2, pred=lambda ps: all(p["state"] == "loaded" for p in ps))
            marks = []
            for i in range(args.n):
                pod = Pod(ctd, f"bench{i}", "default", {"bench": "scope-window"})
                pods.append(pod)
                pod.start_sandbox()
                mark = uuid.uuid4().hex[:10]
                marks.append(mark)
                pod.start_container("first", "sh", "-c", f"cd /tmp/first-{mark} 2>/dev/null; sleep 3600")
            time.sleep(3)
            events = d.events()
            execs = {}   # marker -> time of the container's first exec
            for e in events:
                ex = e.get("process_exec")
                if ex and "/tmp/first-" in ex["process"].get("arguments", ""):
                    execs[ex["process"]["arguments"].split("/tmp/first-")[1][:10]] = wall(e["time"])
            log = [m for m in map(APPLIED.match, d.log_text().splitlines()) if m]
            for name in SCOPES:
                covered = {e["process_kprobe"]["args"][0]["string_arg"].rsplit("-", 1)[1]
                           for e in events if e.get("process_kprobe", {}).get("policy_name") == name}
                # updates come one per new cgroup in the scope, in the order they were made:
                # whole pods get the pod's cgroup (at its sandbox) and then the container's
                updates = [wall(m.group(1)) for m in log if m.group(2) == name]
                step = 2 if name == "whole-pods" else 1
                margins = [(execs[m] - updates[k * step]) * 1000 for k, m in enumerate(marks)
                           if m in execs and k * step < len(updates)]
                print(f"{name}: first action of {sum(m in covered for m in marks)}/{args.n} containers reported",
                      end="")
                if margins:
                    print(f"; covered before the first exec by median {statistics.median(margins):.1f} ms "
                          f"(min {min(margins):.1f}, max {max(margins):.1f}; log times have ms resolution)")
                else:
                    print()
        finally:
            d.stop()
            for pod in pods:
                pod.remove()
            ctd.stop()


if __name__ == "__main__":
    main()
