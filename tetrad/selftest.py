"""Start-up self-test of the BTF-derived offsets.

The process sensor reads the daemon's own identity through exactly the code
that fills exec records (bpf/task.h) and the result is compared with /proc.
Any difference means an offset is wrong for this kernel, and events would be
silently wrong, so the daemon refuses to start and says what differed."""

from __future__ import annotations

import os
import time

from .process.model import NAMESPACE_NAMES
from .process.procfs import cgroup_id_of, namespaces_of, parse_status
from .sensors.records import RECORD_SELFTEST, TaskRecord


class SelfTestError(Exception):
    pass


def own_pid(procfs: str = "/proc") -> int:
    """This process's pid as BPF sees it: in the pid namespace of `procfs`,
    which is the host's one when a container points --procfs at the host's /proc."""
    return int(os.readlink(f"{procfs}/self"))


def expected_identity(cgroup_root: str, procfs: str = "/proc") -> dict:
    """What /proc (`procfs`) says about this process."""
    pid = own_pid(procfs)
    with open(f"{procfs}/self/status") as f:
        status = parse_status(f.read())
    try:
        with open(f"{procfs}/self/loginuid") as f:
            auid = int(f.read())
    except OSError:
        auid = 0xFFFFFFFF
    with open(f"{procfs}/self/cmdline", "rb") as f:
        cmdline = f.read()
    # a namespace type this kernel lacks (inode 0) is not compared
    ns = [inum or None for inum in namespaces_of(procfs, "self")]
    return {
        "pid": pid,
        "ppid": int(status["PPid"]),
        "auid": auid,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "cgroup_id": cgroup_id_of(procfs, "self", cgroup_root) if cgroup_root else None,
        "nspid": int(status["NSpid"].split()[-1]),
        "cap_effective": int(status["CapEff"], 16),
        "args": cmdline[:4096],
        "ns": ns,
    }


def observed_identity(rec: TaskRecord) -> dict:
    return {
        "pid": rec.pid, "ppid": rec.ppid, "auid": rec.auid, "uid": rec.creds[0],
        "gid": rec.creds[1], "cwd": rec.cwd, "cgroup_id": rec.cgroup_id, "nspid": rec.nspid,
        "cap_effective": rec.caps[1], "args": rec.args, "ns": list(rec.ns),
    }


def compare(expected: dict, observed: dict) -> list[str]:
    problems = []
    for key, want in expected.items():
        got = observed.get(key)
        if key == "ns":
            for name, w, g in zip(NAMESPACE_NAMES, want, got):
                if w is not None and w != g:
                    problems.append(f"ns.{name}: BPF read {g}, /proc says {w}")
        elif want is not None and want != got:
            problems.append(f"{key}: BPF read {got!r}, /proc says {want!r}")
    return problems


def run(sensor, poll_records, cgroup_root: str, timeout_s: float = 3.0,
        procfs: str = "/proc") -> dict:
    """Trigger the self-test probe and check it.  `poll_records(ms)` polls the
    ring buffer and returns self-test records seen so far."""
    sensor.arm_selftest(own_pid(procfs))
    try:
        expected = expected_identity(cgroup_root, procfs)
        os.getpgid(0)
        deadline = time.monotonic() + timeout_s
        records: list[TaskRecord] = []
        while not records and time.monotonic() < deadline:
            records = [r for r in poll_records(100) if r.type == RECORD_SELFTEST]
    finally:
        sensor.disarm_selftest()
    if not records:
        raise SelfTestError("self-test: the BPF probe never reported (is the syscalls:sys_enter_getpgid tracepoint working?)")
    observed = observed_identity(records[0])
    problems = compare(expected, observed)
    if problems:
        raise SelfTestError("self-test failed, struct offsets from BTF do not match this kernel: "
                            + "; ".join(problems))
    return observed
