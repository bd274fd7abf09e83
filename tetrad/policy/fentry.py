"""Loading a BCC module's functions as fentry/fexit programs on a kernel function.

An fentry or fexit program is verified against one kernel function (its BTF
prototype), which BCC derives from the program's name ("kfunc__<function>",
"kretfunc__<function>"), as for BPF LSM programs (tetrad/policy/lsm.py, which
does the loading).  bpf/policy.c's fentry hooks tail-call stages shared by a
group of hooks whose functions have one prototype: the stages are loaded as
programs of the group's first function, the entry of each hook as a program of
its own function.
"""

from __future__ import annotations

import os

from . import lsm


def load(bpf, func_name: str, function: str, at_exit: bool) -> int:
    """The fd of `func_name` of BCC module `bpf`, loaded as an fexit (`at_exit`) or
    fentry program of kernel function `function`; OSError when refused."""
    from bcc import BPF
    prefix, end = ("kretfunc__", "fexit") if at_exit else ("kfunc__", "fentry")
    return lsm.load_as(bpf, func_name, BPF.TRACING, prefix + function, f"{end} of {function}")


def attach(prog_fd: int) -> int:
    """Attach a loaded fentry/fexit program; returns the link fd (closing it detaches)."""
    from bcc.libbcc import lib
    fd = lib.bpf_attach_kfunc(prog_fd)
    if fd < 0:
        raise OSError(-fd, f"cannot attach the fentry/fexit program: {os.strerror(-fd)}")
    return fd
