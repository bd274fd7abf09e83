"""Make PID 1 itself open a file, to test that enforcement never acts on PID 1.

Only in the kernel lane's guest, where PID 1 is our own init
(scripts/kernel-lane/guest-init, a shell waiting for the lane's script): the
test attaches to it with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT: no signal is
sent), and while it is stopped in its wait4 makes it run openat() and close()
through its own `syscall` instruction, single-stepped, then puts its registers
back, so that wait4 restarts as if nothing had happened.  x86_64 only.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

PTRACE_PEEKDATA, PTRACE_GETREGS, PTRACE_SETREGS, PTRACE_SINGLESTEP = 2, 12, 13, 9
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
SYS_OPENAT, SYS_CLOSE = 257, 3
AT_FDCWD = -100
WALL = 0x40000000   # waitpid __WALL: a traced process that is not our child
LANE_INIT = "tetrad-lane-init"


class Regs(ctypes.Structure):   # struct user_regs_struct (x86_64)
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
        "es", "fs", "gs")]


def pid1_is_the_lane_init() -> bool:
    return LANE_INIT in Path("/proc/1/cmdline").read_bytes().decode(errors="replace")


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    return libc


def _call(libc, req, pid, addr=None, data=None) -> int:
    ctypes.set_errno(0)
    r = libc.ptrace(req, pid, addr, data)
    err = ctypes.get_errno()
    if r == -1 and err:
        raise OSError(err, f"ptrace({req}) on PID {pid}: {os.strerror(err)}")
    return r


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def openat_in(pid: int, path: str, flags: int) -> int:
    """Make `pid` (PID 1, or a process made for checking this helper) call
    openat(AT_FDCWD, path, flags, 0644) and close what it got: returns openat's
    result (an fd number, or -errno)."""
    assert pid != 1 or pid1_is_the_lane_init(), "PID 1 is not the kernel lane's init: not touching it"
    libc = _libc()
    _call(libc, PTRACE_SEIZE, pid)
    try:
        _call(libc, PTRACE_INTERRUPT, pid)
        _, status = os.waitpid(pid, WALL)
        assert os.WIFSTOPPED(status), status
        saved = Regs()
        _call(libc, PTRACE_GETREGS, pid, None, ctypes.byref(saved))
        # stopped inside a syscall (its wait4): the instruction before rip is that `syscall`
        assert _signed(saved.orig_rax) >= 0, f"process is not in a syscall (orig_rax {saved.orig_rax})"
        insn = _call(libc, PTRACE_PEEKDATA, pid, ctypes.c_void_p(saved.rip - 2)) & 0xFFFF
        assert insn == 0x050F, f"no syscall instruction before rip ({insn:#x})"
        # the path below its stack pointer, well past the red zone
        where = (saved.rsp - 8192) & ~15
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(where)
            mem.write(path.encode() + b"\0")

        def syscall(nr, *args) -> int:
            regs = Regs.from_buffer_copy(saved)
            regs.rax, regs.orig_rax, regs.rip = nr, (1 << 64) - 1, saved.rip - 2   # orig_rax -1: no restart
            for name, value in zip(("rdi", "rsi", "rdx", "r10"), args):
                setattr(regs, name, value & ((1 << 64) - 1))
            _call(libc, PTRACE_SETREGS, pid, None, ctypes.byref(regs))
            _call(libc, PTRACE_SINGLESTEP, pid)
            _, st = os.waitpid(pid, WALL)
            assert os.WIFSTOPPED(st), st
            _call(libc, PTRACE_GETREGS, pid, None, ctypes.byref(regs))
            return _signed(regs.rax)

        fd = syscall(SYS_OPENAT, AT_FDCWD, where, flags, 0o644)
        if fd >= 0:
            syscall(SYS_CLOSE, fd)
        _call(libc, PTRACE_SETREGS, pid, None, ctypes.byref(saved))   # wait4 restarts on resume
        return fd
    finally:
        _call(libc, PTRACE_DETACH, pid)
