"""Kernel struct offsets for the BPF programs, resolved from BTF.

The BPF C in bpf/ never dereferences a kernel struct through a header type:
the headers BCC compiles against may belong to another kernel (on our own
machines they are 6.1 headers under a 6.18 kernel).  Each member it reads is
listed here, looked up in /sys/kernel/btf/vmlinux, and passed to the compiler
as ``-DOFF_<struct>__<member>=<bytes>`` (dots in a member path become ``_``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .btf import Btf, BtfError


@dataclass(frozen=True)
class Member:
    struct: str
    path: str
    required: bool = True

    @property
    def macro(self) -> str:
        return f"OFF_{self.struct}__{self.path.replace('.', '_')}"


# What bpf/task.h and bpf/process.c read.  Optional members depend on kernel
# config (CONFIG_AUDIT for loginuid, CONFIG_TIME_NS for time namespaces); the
# C code checks `#ifdef` for them.
PROCESS_MEMBERS: tuple[Member, ...] = (
    Member("task_struct", "flags"),
    Member("task_struct", "pid"),
    Member("task_struct", "tgid"),
    Member("task_struct", "real_parent"),
    Member("task_struct", "cred"),
    Member("task_struct", "loginuid", required=False),
    Member("task_struct", "fs"),
    Member("task_struct", "mm"),
    Member("task_struct", "cgroups"),
    Member("task_struct", "nsproxy"),
    Member("task_struct", "signal"),
    Member("task_struct", "exit_code"),
    Member("task_struct", "thread_pid"),
    Member("signal_struct", "live"),
    Member("cred", "uid"),
    Member("cred", "gid"),
    Member("cred", "euid"),
    Member("cred", "egid"),
    Member("cred", "suid"),
    Member("cred", "sgid"),
    Member("cred", "fsuid"),
    Member("cred", "fsgid"),
    Member("cred", "securebits"),
    Member("cred", "cap_inheritable"),
    Member("cred", "cap_permitted"),
    Member("cred", "cap_effective"),
    Member("cred", "user_ns"),
    Member("user_namespace", "ns.inum"),
    Member("nsproxy", "uts_ns"),
    Member("nsproxy", "ipc_ns"),
    Member("nsproxy", "mnt_ns"),
    Member("nsproxy", "pid_ns_for_children"),
    Member("nsproxy", "net_ns"),
    Member("nsproxy", "time_ns", required=False),
    Member("nsproxy", "time_ns_for_children", required=False),
    Member("nsproxy", "cgroup_ns"),
    Member("uts_namespace", "ns.inum"),
    Member("ipc_namespace", "ns.inum"),
    Member("mnt_namespace", "ns.inum"),
    Member("pid_namespace", "ns.inum"),
    Member("net", "ns.inum"),
    Member("time_namespace", "ns.inum", required=False),
    Member("cgroup_namespace", "ns.inum"),
    Member("pid", "level"),
    Member("pid", "numbers"),
    Member("upid", "nr"),
    Member("upid", "ns"),
    Member("css_set", "dfl_cgrp"),
    Member("cgroup", "kn"),
    Member("kernfs_node", "id"),
    Member("mm_struct", "arg_start"),
    Member("mm_struct", "arg_end"),
    Member("fs_struct", "pwd.dentry"),
    Member("fs_struct", "pwd.mnt"),
    Member("fs_struct", "root.dentry"),
    Member("fs_struct", "root.mnt"),
    Member("dentry", "d_parent"),
    Member("dentry", "d_name.name"),
    Member("vfsmount", "mnt_root"),
    Member("mount", "mnt"),
    Member("mount", "mnt_parent"),
    Member("mount", "mnt_mountpoint"),
    Member("linux_binprm", "filename"),
)

# What bpf/policy.c and bpf/path.h read besides the above: files behind fds,
# paths, executables, sockets.
POLICY_MEMBERS: tuple[Member, ...] = (
    Member("task_struct", "files"),
    Member("files_struct", "fdt"),
    Member("files_struct", "fdtab"),
    Member("fdtable", "fd"),
    Member("fdtable", "max_fds"),
    Member("file", "f_path.dentry"),
    Member("file", "f_path.mnt"),
    Member("file", "private_data"),
    Member("file", "f_mode"),
    Member("file", "f_flags"),
    Member("path", "dentry"),
    Member("path", "mnt"),
    Member("mm_struct", "exe_file"),
    Member("socket", "sk"),
    Member("sock", "__sk_common.skc_family"),
    Member("sock", "__sk_common.skc_rcv_saddr"),
    Member("sock", "__sk_common.skc_daddr"),
    Member("sock", "__sk_common.skc_v6_rcv_saddr"),
    Member("sock", "__sk_common.skc_v6_daddr"),
    Member("sock", "__sk_common.skc_num"),
    Member("sock", "__sk_common.skc_dport"),
    Member("sock", "__sk_common.skc_state"),
    Member("sock", "__sk_common.skc_cookie"),
    Member("sock", "sk_protocol"),
    Member("sock", "sk_type"),
    Member("sock", "sk_mark"),
    Member("sock", "sk_priority"),
)

# Struct sizes the C code needs (array strides).
PROCESS_SIZES: tuple[str, ...] = ("upid",)


class OffsetError(Exception):
    """A required member is missing from this kernel's BTF."""


def resolve(btf: Btf, members=PROCESS_MEMBERS, sizes=PROCESS_SIZES) -> dict[str, int]:
    """Macro name -> value for every member this kernel has."""
    macros: dict[str, int] = {}
    missing = []
    for m in members:
        try:
            macros[m.macro] = btf.member_offset(m.struct, m.path)
        except BtfError as e:
            if m.required:
                missing.append(str(e))
    for name in sizes:
        try:
            macros[f"SIZEOF_{name}"] = btf.struct_size(name)
        except BtfError as e:
            missing.append(str(e))
    if missing:
        raise OffsetError("kernel BTF lacks what tetrad needs: " + "; ".join(missing))
    return macros


def cflags(macros: dict[str, int]) -> list[str]:
    return [f"-D{name}={value}" for name, value in sorted(macros.items())]
