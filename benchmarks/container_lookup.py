"""What naming a process's container and pod costs on the event path
(ContainerResolver.describe), per exec, on this machine.  Prints numbers.

    .venv/bin/python benchmarks/container_lookup.py
"""

from __future__ import annotations

import os
import time
import uuid

from tetrad.containers.containerd import ContainerInfo
from tetrad.containers.resolver import ContainerResolver
from tetrad.features import detect
from tetrad.process.model import Process

N = 200_000


def process(cgroup_id: int, pid: int = 1) -> Process:
    return Process(exec_id="e", pid=pid, tid=pid, ktime=0, start_time="", uid=0, auid=0, cwd="/",
                   binary="/bin/true", arguments="", flags=0, nspid=7, cgroup_id=cgroup_id)


def per_call_us(fn, n: int = N) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    root = detect("/sys/kernel/btf/vmlinux", quick=True).cgroup_v2_root
    base = f"{root}/tetrad-bench-{uuid.uuid4().hex[:8]}"
    cid = uuid.uuid4().hex * 2
    dirs = [f"{base}/kubepods/besteffort/pod{uuid.uuid4()}/{cid}"] + \
           [f"{base}/fresh-{i}/k8s.io/{uuid.uuid4().hex * 2}" for i in range(2000)]
    for d in dirs:
        os.makedirs(d)
    resolver = ContainerResolver("/proc", root, containerd_address="")
    try:
        resolver._info[cid] = ContainerInfo(
            id=cid, namespace="k8s.io", name="app", image_name="docker.io/x/y:1",
            image_id="docker.io/x/y@sha256:00", start_time="2026-01-01T00:00:00Z",
            pod_name="xwing", pod_namespace="default", pod_uid="u", pod_labels={"app": "x"},
            workload="xwing", workload_kind="Pod")
        in_pod = process(os.stat(dirs[0]).st_ino)
        host = process(os.stat(os.path.dirname(base + "/x")).st_ino)
        print(f"describe, host process (cached cgroup):        {per_call_us(lambda: resolver.describe(host)):6.2f} us")
        print(f"describe, process in a known pod (cached):     {per_call_us(lambda: resolver.describe(in_pod)):6.2f} us")
        fresh = [process(os.stat(d).st_ino) for d in dirs[1:]]
        it = iter(fresh)
        print(f"first process of a new cgroup (file handle):   "
              f"{per_call_us(lambda: resolver.describe(next(it)), len(fresh)):6.2f} us")
        at_root = process(os.stat(root).st_ino, os.getpid())
        print(f"cgroup v2 root, /proc/<pid>/cgroup read:       "
              f"{per_call_us(lambda: resolver.describe(at_root), 20_000):6.2f} us")
    finally:
        resolver.close()
        for d in dirs:
            while d != base:
                try:
                    os.rmdir(d)
                except OSError:
                    break
                d = os.path.dirname(d)
        os.rmdir(base)


if __name__ == "__main__":
    main()
