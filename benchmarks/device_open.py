#!/usr/bin/env python3
"""Device opens under the cgroup device program (bpf/enforce_cgroup.c): the cost
it adds to opening a device no rule names (/dev/null, one hash lookup in the
kernel), and the enforcement latency: how long an open refused with EPERM
takes, against the same open let through (which fails with ENXIO: the node is
a memory-device minor no driver serves, so nothing else on the machine uses
it and the rule needs no scope).

    .venv/bin/python benchmarks/device_open.py [-n 200000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tetrad import offsets                                            # noqa: E402
from tetrad.btf import Btf                                             # noqa: E402
from tetrad.enforce.devcgroup import DEV_CHAR, DeviceEnforcer, DeviceRule   # noqa: E402
from tetrad.features import detect                                     # noqa: E402

DRIVER = r"""
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
for _ in range(n):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        pass
print((time.perf_counter() - t0) / n)
"""
GHOST = (1, 250)


def per_open(path: str, n: int) -> float:
    out = subprocess.run([sys.executable, "-c", DRIVER, path, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tetrad-devopen-"))
    ghost = work / "ghost"
    os.mknod(ghost, 0o666 | 0o020000, os.makedev(*GHOST))

    per_open("/dev/null", 2000)   # warm-up
    # rounds alternate without and with the program, so that the machine's
    # drift weighs on both alike
    rows: dict[str, list[float]] = {k: [] for k in ("null", "null+bpf", "ghost", "ghost+bpf")}
    reported = lost = 0
    macros, root = offsets.resolve(Btf.load()), detect(quick=True).cgroup_v2_root
    for _ in range(args.rounds):
        rows["null"].append(per_open("/dev/null", args.n))
        rows["ghost"].append(per_open(str(ghost), args.n // 4))
        enforcer = DeviceEnforcer(root, macros)
        try:
            enforcer.set_rule(0, DeviceRule(devices={(DEV_CHAR, *GHOST)}))
            rows["null+bpf"].append(per_open("/dev/null", args.n))
            rows["ghost+bpf"].append(per_open(str(ghost), args.n // 4))
            reported, lost = reported + len(enforcer.poll(100)), lost + enforcer.lost()
        finally:
            enforcer.close()
    null_before, null_after, ghost_allowed, ghost_denied = (
        statistics.median(rows[k]) for k in ("null", "null+bpf", "ghost", "ghost+bpf"))
    print(f"device opens: open()+close(), {args.rounds} rounds, median per call")
    print(f"  /dev/null, no program          {null_before * 1e6:6.2f} us")
    print(f"  /dev/null, program loaded      {null_after * 1e6:6.2f} us  ratio {null_after / null_before:.3f}")
    print(f"  unserved node, allowed (ENXIO) {ghost_allowed * 1e6:6.2f} us")
    print(f"  unserved node, refused (EPERM) {ghost_denied * 1e6:6.2f} us")
    print(f"  refusals: {reported} reported, {lost} counted as lost (the consumer read only at the end)")

if __name__ == "__main__":
    main()
