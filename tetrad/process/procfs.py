"""Processes that were running before tetrad started, read from /proc
(`--procfs`, which in Kubernetes mode is the host's /proc mounted elsewhere).

They enter the cache with the `procFS` flag so that their children, and the
events of their children, have parents."""

from __future__ import annotations

import logging
import os

from . import flags as pflags
from .model import NAMESPACE_NAMES, format_arguments

log = logging.getLogger("tetrad.procfs")

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcInfo:
    """What /proc says about one process (everything a Process needs)."""
    __slots__ = ("pid", "ppid", "ktime", "uid", "auid", "cwd", "binary", "argv", "flags",
                 "nspid", "cgroup_id", "creds", "caps", "ns")


def _read(path: str, mode: str = "r"):
    with open(path, mode) as f:
        return f.read()


def read_process(procfs: str, pid: int, cgroup_root: str = "") -> ProcInfo | None:
    """One process from /proc, or None if it is gone or a kernel thread."""
    base = f"{procfs}/{pid}"
    try:
        stat = _read(f"{base}/stat")
        # comm may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rindex(")") + 2:].split()
        ppid = int(fields[1])
        kthread_flag = int(fields[6]) & 0x00200000  # PF_KTHREAD
        if kthread_flag:
            return None
        starttime = int(fields[19])
        cmdline = _read(f"{base}/cmdline", "rb")
        status = _read(f"{base}/status")
    except (OSError, ValueError, IndexError):
        return None
    info = ProcInfo()
    info.pid = pid
    info.ppid = ppid
    info.ktime = starttime * 1_000_000_000 // CLK_TCK
    info.flags = pflags.PROCFS
    st = parse_status(status)
    uids = st.get("Uid", "0 0 0 0").split()
    gids = st.get("Gid", "0 0 0 0").split()
    info.uid = int(uids[0])
    info.creds = (int(uids[0]), int(gids[0]), int(uids[1]), int(gids[1]), int(uids[2]),
                  int(gids[2]), int(uids[3]), int(gids[3]), 0)
    info.caps = tuple(int(st.get(k, "0"), 16) for k in ("CapPrm", "CapEff", "CapInh"))
    nspids = st.get("NSpid", str(pid)).split()
    info.nspid = int(nspids[-1])
    try:
        info.auid = int(_read(f"{base}/loginuid"))
    except (OSError, ValueError):
        info.auid = 0xFFFFFFFF
    try:
        info.binary = os.readlink(f"{base}/exe")
    except OSError:
        info.binary = ""
        info.flags |= pflags.ERROR_FILENAME
    try:
        info.cwd = os.readlink(f"{base}/cwd")
    except OSError:
        info.cwd = ""
        info.flags |= pflags.ERROR_CWD
    if info.cwd == "/":
        info.flags |= pflags.ROOT_CWD
    argv = cmdline.rstrip(b"\0").split(b"\0") if cmdline else []
    info.argv = [a.decode("utf-8", "replace") for a in argv[1:]]
    info.ns = namespaces_of(procfs, pid)
    info.cgroup_id = cgroup_id_of(procfs, pid, cgroup_root)
    return info


def namespaces_of(procfs: str, pid) -> tuple:
    """Namespace inodes of a process in NAMESPACE_NAMES order (0: absent)."""
    out = []
    for name in NAMESPACE_NAMES:
        try:
            out.append(os.stat(f"{procfs}/{pid}/ns/{name}").st_ino)
        except OSError:
            out.append(0)
    return tuple(out)


def parse_status(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cgroup_id_of(procfs: str, pid, cgroup_root: str) -> int:
    """The cgroup v2 id of a process: the inode of its cgroup directory."""
    if not cgroup_root:
        return 0
    try:
        for line in _read(f"{procfs}/{pid}/cgroup").splitlines():
            if line.startswith("0::"):
                return os.stat(cgroup_root + line[3:].rstrip()).st_ino
    except OSError:
        pass
    return 0


def scan(procfs: str = "/proc", cgroup_root: str = "") -> list[ProcInfo]:
    """Every user process, parents before children (by start time)."""
    found = []
    for entry in os.scandir(procfs):
        if entry.name.isdigit():
            info = read_process(procfs, int(entry.name), cgroup_root)
            if info is not None:
                found.append(info)
    found.sort(key=lambda p: (p.ktime, p.pid))
    return found


def arguments_of(info: ProcInfo) -> str:
    return format_arguments(info.argv)
