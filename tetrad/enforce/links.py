"""Attaching BPF programs with BPF links (bpf(BPF_LINK_CREATE)).

A link lives as long as its file descriptor: when the daemon exits, for any
reason, the kernel detaches the program.  Enforcement therefore fails open
with the daemon, and nothing of it can be left behind to block a host that
no longer runs tetrad.  BCC 0.26 attaches cgroup programs with the legacy
BPF_PROG_ATTACH, which outlives the process, so links are made here."""

from __future__ import annotations

import ctypes
import os

_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
_BPF_LINK_CREATE = 28

# enum bpf_attach_type (uapi, stable)
CGROUP_INET_SOCK_CREATE = 2
CGROUP_DEVICE = 6
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11
CGROUP_UDP4_SENDMSG = 14
CGROUP_UDP6_SENDMSG = 15

_libc = ctypes.CDLL(None, use_errno=True)


class _LinkCreate(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint8 * 112)]


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Returns the link's fd; OSError with the kernel's errno on failure."""
    attr = _LinkCreate(prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type)
    fd = _libc.syscall(_SYS_BPF, _BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(BPF_LINK_CREATE, attach type {attach_type}): {os.strerror(err)}")
    return fd
