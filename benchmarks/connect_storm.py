#!/usr/bin/env python3
"""Connect storm to a loopback listener: untraced, under tetrad with a policy
that denies connections to another address (so every connect of the host is
judged by the cgroup program, and allowed), and the enforcement latency: how
long a denied connect() takes to fail with EPERM.

    .venv/bin/python benchmarks/connect_storm.py [-n 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TETRAD = [str(REPO / ".venv/bin/tetrad")] if (REPO / ".venv/bin/tetrad").exists() else [sys.executable, "-m", "tetrad"]

DRIVER = r"""
import socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
t0 = time.perf_counter()
for _ in range(n):
    s = socket.socket()
    a = time.perf_counter()
    try:
        s.connect((addr, port))
    except OSError:
        pass
    times.append(time.perf_counter() - a)
    s.close()
total = time.perf_counter() - t0
times.sort()
print(total, times[len(times) // 2])
"""

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: deny-other-address
spec:
  kprobes:
  - call: tcp_connect
    syscall: false
    args:
    - index: 0
      type: sock
    selectors:
    - matchArgs:
      - index: 0
        operator: DAddr
        values: ["127.0.0.2/32"]
      matchActions:
      - action: Override
        argError: -1
"""


def accept_forever(srv: socket.socket, stop: threading.Event) -> None:
    srv.settimeout(0.2)
    while not stop.is_set():
        try:
            srv.accept()[0].close()
        except OSError:
            pass


def drive(addr: str, port: int, n: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", DRIVER, addr, str(port), str(n)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    stop = threading.Event()
    threading.Thread(target=accept_forever, args=(srv, stop), daemon=True).start()

    drive("127.0.0.1", port, 500)   # warm-up
    untraced = [drive("127.0.0.1", port, args.n) for _ in range(args.rounds)]

    work = Path(tempfile.mkdtemp(prefix="tetrad-connect-"))
    (work / "policies").mkdir()
    (work / "policies" / "deny.yaml").write_text(POLICY)
    env = dict(os.environ, TETRAD_CONFIG_DIR=str(work / "etc"))
    daemon = subprocess.Popen(TETRAD + ["run", f"--tracing-policy-dir={work / 'policies'}",
                                        f"--server-address=unix://{work / 'run' / 'tetrad.sock'}",
                                        "--enable-journal=false"],
                              stderr=open(work / "daemon.log", "w"), env=env)
    status = work / "run" / "status.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            pols = json.loads(status.read_text()).get("policies") or []
            if pols and pols[0]["state"] == "loaded":
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    else:
        sys.exit(f"policy not loaded: see {work / 'daemon.log'}")
    try:
        traced = [drive("127.0.0.1", port, args.n) for _ in range(args.rounds)]
        denied = drive("127.0.0.2", port, 2000)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        stop.set()

    base = statistics.median(t for t, _ in untraced)
    under = statistics.median(t for t, _ in traced)
    print(f"connect storm: {args.n} connect()+close() to 127.0.0.1, {args.rounds} rounds, median")
    print(f"  untraced                      {base:7.3f} s  ({args.n / base:8.0f} connects/s)"
          f"  median connect {statistics.median(m for _, m in untraced) * 1e6:6.1f} us")
    print(f"  tetrad, deny rule elsewhere   {under:7.3f} s  ratio {under / base:.3f}"
          f"  median connect {statistics.median(m for _, m in traced) * 1e6:6.1f} us")
    print(f"  enforcement latency: a denied connect() fails with EPERM in {denied[1] * 1e6:.1f} us (median)")


if __name__ == "__main__":
    main()
