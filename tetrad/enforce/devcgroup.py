"""Device rules enforced by a cgroup device program (bpf/enforce_cgroup.c, -DENFORCE_DEVICES).

`DeviceRule` is what a policy refusing opens of device nodes compiles to:
which devices (type, major, minor), which accesses (read, write), for which
processes, and whether to refuse (EPERM) or only report.  `DeviceEnforcer`
owns the BPF object; it is a SockEnforcer with another program and rule
layout: the process scope maps, BPF links on the cgroup v2 root (so
enforcement ends with the daemon) and the record ring buffer work the same."""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass, field

from . import links
from .sock import (ACTION_DENY, SCOPE_CGROUP, SCOPE_NOT_PROCESS, SCOPE_PROCESS, SockEnforcer,
                   check_namespaces)

# uapi BPF_DEVCG_*
DEV_BLOCK = 1
DEV_CHAR = 2
ACC_MKNOD = 1
ACC_READ = 2
ACC_WRITE = 4

RECORD_DEVICE = 17


class _DevKey(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DevRule(ctypes.Structure):
    _fields_ = [("action", ctypes.c_uint32), ("access", ctypes.c_uint32),
                ("scope", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _DevRecord(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint8), ("pad0", ctypes.c_uint8 * 3), ("size", ctypes.c_uint32),
                ("ktime", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("tid", ctypes.c_uint32),
                ("rule", ctypes.c_uint32), ("action", ctypes.c_uint32), ("access", ctypes.c_uint32),
                ("dev_type", ctypes.c_uint32), ("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("cgroup_id", ctypes.c_uint64)]


assert ctypes.sizeof(_DevRecord) == 56


def device_of(st_mode: int, st_rdev: int) -> tuple[int, int, int] | None:
    """(type, major, minor) of a device node's stat, None for anything else."""
    if stat.S_ISCHR(st_mode):
        return DEV_CHAR, os.major(st_rdev), os.minor(st_rdev)
    if stat.S_ISBLK(st_mode):
        return DEV_BLOCK, os.major(st_rdev), os.minor(st_rdev)
    return None


@dataclass
class DeviceRule:
    """One device rule: refusing `access` to `devices` for the scoped processes."""
    action: int = ACTION_DENY
    access: int = ACC_READ | ACC_WRITE                       # opening for reading or writing
    devices: set[tuple[int, int, int]] = field(default_factory=set)
    binaries: set[str] = field(default_factory=set)
    binaries_negate: bool = False
    pids: set[int] = field(default_factory=set)
    cgroup_ids: set[int] | None = None
    namespaces: list = field(default_factory=list)       # matchNamespaces: [(kind, NotIn?, [inode, ...])]
    label: str = ""

    def to_struct(self) -> _DevRule:
        scope = 0
        if self.binaries or self.pids:
            scope |= SCOPE_NOT_PROCESS if self.binaries_negate else SCOPE_PROCESS
        if self.cgroup_ids is not None:
            scope |= SCOPE_CGROUP
        check_namespaces(self.namespaces)
        return _DevRule(action=self.action, access=self.access, scope=scope)


@dataclass
class DeviceVerdict:
    """An open a rule refused (action deny) or would have refused (monitor)."""
    ktime: int
    pid: int
    tid: int
    rule: int
    action: int
    access: int
    device: tuple[int, int, int]
    cgroup_id: int


class DeviceEnforcer(SockEnforcer):
    VARIANT = "ENFORCE_DEVICES"
    PROGRAMS = (("device", links.CGROUP_DEVICE, "CGROUP_DEVICE"),)
    KILL_EXITS = ("sys_exit_openat", "sys_exit_openat2", "sys_exit_open", "sys_exit_creat")

    def set_rule(self, slot: int, rule: DeviceRule, running: dict[int, str] | None = None) -> None:
        bit = 1 << slot
        self._clear_devices(bit)
        table = self.bpf[b"devices"]
        for dev in rule.devices:
            key = _DevKey(*dev)
            old = table.get(key)
            table[key] = ctypes.c_uint64((old.value if old is not None else 0) | bit)
        super().set_rule(slot, rule, running)

    def clear_rule(self, slot: int) -> None:
        super().clear_rule(slot)
        self._clear_devices(1 << slot)

    def _clear_devices(self, bit: int) -> None:
        table = self.bpf[b"devices"]
        for k, v in list(table.items()):
            if v.value & bit:
                rest = v.value & ~bit
                if rest:
                    table[k] = ctypes.c_uint64(rest)
                else:
                    del table[k]

    @staticmethod
    def _decode(data) -> DeviceVerdict:
        r = ctypes.cast(data, ctypes.POINTER(_DevRecord)).contents
        return DeviceVerdict(r.ktime, r.pid, r.tid, r.rule, r.action, r.access,
                             (r.dev_type, r.major, r.minor), r.cgroup_id)
