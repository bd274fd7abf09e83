"""matchBinaries / matchParentBinaries with `followChildren`: which running
processes are already in a section's set when a policy loads.

In the kernel (bpf/policy.c, FOLLOW_CHILDREN) a process enters a section's
set when it execs a listed binary and its children inherit it at fork.  That
covers what starts after the policy; this module seeds the processes already
running: a process is in the set when its own binary or the binary of one of
its living ancestors is listed.  (Tetragon does not match children created
before the policy was installed.)  An ancestor that exec'd a listed binary and
then exec'd another one is not visible in /proc: such a process is missed."""

from __future__ import annotations

import os


def _process_table(procfs: str) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, executable path) of every user process."""
    table = {}
    for name in os.listdir(procfs):
        if not name.isdigit():
            continue
        base = f"{procfs}/{name}"
        try:
            with open(f"{base}/stat") as f:
                stat = f.read()
            exe = os.readlink(f"{base}/exe")   # kernel threads have none
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # comm may hold spaces and ')'
        table[int(name)] = (int(fields[1]), exe.removesuffix(" (deleted)"))
    return table


def seed(sections: list[frozenset[str]], procfs: str = "/proc") -> dict[int, int]:
    """tgid -> bits (bit i: section i lists the process's binary or an
    ancestor's) for the running processes in at least one section."""
    table = _process_table(procfs)
    bits: dict[int, int] = {}

    def of(pid: int, depth: int = 0) -> int:
        if pid in bits:
            return bits[pid]
        if pid not in table or depth > 512:   # a pid loop cannot happen; a bound anyway
            return 0
        ppid, exe = table[pid]
        own = sum(1 << i for i, listed in enumerate(sections) if exe in listed)
        bits[pid] = own | (of(ppid, depth + 1) if ppid != pid else 0)
        return bits[pid]

    for pid in table:
        of(pid)
    return {pid: b for pid, b in bits.items() if b}
