"""Decoding the records bpf/task.h sends on the ring buffer.

The layout mirrors `struct task_record`; the C side is the authority.  A
record arrives as bytes; the fixed part is unpacked with one struct.Struct
call and the variable part (argv, filename, cwd components) is sliced out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RECORD_EXEC = 1
RECORD_EXIT = 2
RECORD_CLONE = 3
RECORD_SELFTEST = 4

RECORD_NAMES = {RECORD_EXEC: "exec", RECORD_EXIT: "exit", RECORD_CLONE: "clone", RECORD_SELFTEST: "selftest"}

# header: type u8, pad[3], size u32, ktime u64
# ids: pid, tid, ppid, nspid, auid, flags (u32), cgroup_id u64
# creds: 8 ids, securebits, pad (u32), 3 capability sets (u64)
# namespaces: 10 x u32
# lengths: args_len, filename_len, cwd_len, exit_code
_FIXED = struct.Struct("<B3xIQ" "6IQ" "10I3Q" "10I" "4I")
FIXED_SIZE = _FIXED.size
assert FIXED_SIZE == 168, FIXED_SIZE

NAMESPACE_NAMES = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time",
                   "time_for_children", "cgroup", "user")


@dataclass(slots=True)
class TaskRecord:
    type: int
    ktime: int
    pid: int
    tid: int
    ppid: int
    nspid: int
    auid: int
    flags: int
    cgroup_id: int
    creds: tuple  # uid gid euid egid suid sgid fsuid fsgid securebits
    caps: tuple   # permitted, effective, inheritable
    ns: tuple     # in NAMESPACE_NAMES order
    args: bytes   # argv, NUL separated
    filename: bytes
    cwd: str
    exit_code: int


def decode(buf: bytes) -> TaskRecord:
    f = _FIXED.unpack_from(buf)
    (rtype, _size, ktime, pid, tid, ppid, nspid, auid, flags, cgroup_id) = f[:10]
    creds = f[10:19]      # 8 ids + securebits (pad skipped below)
    caps = f[20:23]
    ns = f[23:33]
    args_len, filename_len, cwd_len, exit_code = f[33:37]
    data = memoryview(buf)[FIXED_SIZE:]
    args = bytes(data[:args_len])
    fn_end = args_len + filename_len
    filename = bytes(data[args_len:fn_end]).rstrip(b"\0")
    cwd = join_components(bytes(data[fn_end:fn_end + cwd_len]))
    return TaskRecord(rtype, ktime, pid, tid, ppid, nspid, auid, flags, cgroup_id,
                      creds, caps, ns, args, filename, cwd, exit_code)


def join_components(raw: bytes) -> str:
    """Leaf-first NUL-terminated path components -> absolute path."""
    if not raw:
        return "/"
    parts = raw.rstrip(b"\0").split(b"\0")
    parts.reverse()
    return "/" + "/".join(p.decode("utf-8", "surrogateescape") for p in parts)
