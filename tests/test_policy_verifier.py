"""bpf/policy.c's kprobe programs only run where the kernel has kprobes (the
kernel lane's guest), but the running kernel's verifier checks them all the
same: every entry point and stage, of both program types, must load here."""

from __future__ import annotations

from tetrad import offsets
from tetrad.bpf_loader import compile_program
from tetrad.btf import Btf
from tetrad.policy.program import MAX_HOOKS, RUNNER_STAGES


def test_every_policy_program_passes_the_verifier():
    from bcc import BPF
    macros = offsets.resolve(Btf.load("/sys/kernel/btf/vmlinux"),
                             offsets.PROCESS_MEMBERS + offsets.POLICY_MEMBERS)
    bpf = compile_program("policy.c", {**macros, "RB_PAGES": 8, "NHOOKS": MAX_HOOKS,
                                       "FOLLOW_CHILDREN": 1})
    try:
        loaded = []
        for prefix, ptype in (("tp", BPF.TRACEPOINT), ("kp", BPF.KPROBE)):
            for stage in RUNNER_STAGES:
                loaded.append(bpf.load_func(f"{prefix}_{stage}".encode(), ptype))
        for slot in (0, MAX_HOOKS - 1):
            for phase in ("enter", "exit"):
                loaded.append(bpf.load_func(f"hook{slot}_{phase}".encode(), BPF.TRACEPOINT))
                loaded.append(bpf.load_func(f"khook{slot}_{phase}".encode(), BPF.KPROBE))
            loaded.append(bpf.load_func(f"hook{slot}_sysenter".encode(), BPF.TRACEPOINT))
        for name in ("follow_exec", "follow_match", "follow_fork", "follow_exit"):   # followChildren
            loaded.append(bpf.load_func(name.encode(), BPF.RAW_TRACEPOINT))
        assert all(fn.fd >= 0 for fn in loaded)
    finally:
        bpf.cleanup()
