"""Loading a BCC module's functions as BPF LSM programs on a hook of our choosing.

A BPF LSM program is verified against one LSM hook, which BCC derives from the
program's name ("lsm__<hook>"), so one C file could hold a single program per
hook.  An lsmhook of bpf/policy.c needs five (its entry point and the four
stages it tail-calls, which must be verified against the same hook), so they
are compiled under names of their own and loaded here, each under the name
"lsm__<hook>": the kernel then knows them all as programs of that hook.
"""

from __future__ import annotations

import ctypes
import os

LOG_SIZE = 1 << 20   # verifier log, read only when a load fails


def _prog_load():
    from bcc.libbcc import lib
    fn = lib.bcc_prog_load
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def load(bpf, func_name: str, hook: str) -> int:
    """The fd of `func_name` of BCC module `bpf`, loaded as a BPF LSM program on `hook`.
    OSError with the verifier's last lines when the kernel refuses it."""
    from bcc import BPF
    return load_as(bpf, func_name, BPF.LSM, f"lsm__{hook}", f"LSM hook {hook}")


def load_as(bpf, func_name: str, prog_type: int, name: str, what: str) -> int:
    """`func_name` of `bpf` loaded under `name`, from which BCC takes the BTF target
    ("lsm__<hook>", "kfunc__<function>", "kretfunc__<function>"); `what` names the
    target in the OSError raised when the kernel refuses it."""
    insns = bpf.dump_func(func_name.encode())
    buf = ctypes.create_string_buffer(len(insns))
    ctypes.memmove(buf, insns, len(insns))
    load_fn = _prog_load()
    fd = load_fn(prog_type, name.encode(), buf, len(insns), b"GPL", 0, 0, None, 0)
    if fd >= 0:
        return fd
    err = -fd
    log = ctypes.create_string_buffer(LOG_SIZE)
    retry = load_fn(prog_type, name.encode(), buf, len(insns), b"GPL", 0, 1, log, LOG_SIZE)
    if retry >= 0:   # refused once, accepted now: keep it
        return retry
    tail = " | ".join(log.value.decode(errors="replace").strip().splitlines()[-4:])
    raise OSError(err, f"{func_name} on {what}: {os.strerror(err) if err else 'refused'}"
                       + (f": {tail}" if tail else ""))


def attach(prog_fd: int) -> int:
    """Attach a loaded BPF LSM program; returns the link fd (closing it detaches)."""
    from bcc.libbcc import lib
    fd = lib.bpf_attach_lsm(prog_fd)
    if fd < 0:
        raise OSError(-fd, f"cannot attach the BPF LSM program: {os.strerror(-fd)}")
    return fd
