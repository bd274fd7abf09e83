"""Choosing how each hook of a policy attaches on this kernel.

Which mechanism serves a kprobe or lsmhook is decided by tetrad/backends.py's
`choose()`, the rule `tetrad probe` previews, asked about the mechanisms this
engine attaches (kprobes, fentry/fexit, tracepoints) and this module's
table of tracepoint equivalents; `plan` turns that decision into attach points:
  tracepoints:                  the tracepoint itself
  uprobes:                      a BCC uprobe (and uretprobe when a return value is traced)
  kprobes with syscall: true:   a kprobe (+kretprobe) on the syscall's entry function where the
                                kernel has kprobes, else syscalls:sys_enter_X (+ sys_exit_X for
                                `return`/`returnCopy`)
  kprobes on kernel functions:  a kprobe (+kretprobe) where the kernel has kprobes, else the
                                documented tracepoint equivalent in EQUIVALENTS, else rejected
  either, on fentry:            (forced, or where kprobes are missing and BPF trampolines load)
                                fentry on the function (the syscall's entry function for
                                syscall: true); fexit alone when the return value is traced,
                                since fexit sees the arguments and the return value at once
  lsmhooks:                     a BPF LSM program on the hook where BPF LSM loads, else rejected
                                (nothing else can deny, so nothing else stands in for it)
  kprobes with Override:        BPF LSM programs on the function's LSM equivalent
                                (overrides.py), as backends.choose_override() decides
A policy can force a choice with `spec.options: [{name: hook-backend, value: kprobe|fentry|tracepoint}]`.
`tetrad tracingpolicy list` shows each hook's backend and attach points.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from .. import backends
from ..btf import Btf, BtfError, FuncProto
from .model import HOOK_KPROBE, HOOK_LSM, HOOK_TRACEPOINT, HOOK_UPROBE, Hook, Policy

BACKEND_KPROBE = "kprobe"
BACKEND_FENTRY = "fentry"
BACKEND_SYSCALL_TP = "syscall-tracepoints"
BACKEND_TRACEPOINT = "tracepoint"
BACKEND_EQUIVALENT = "tracepoint-equivalent"
BACKEND_UPROBE = "uprobe"
BACKEND_LSM = "bpf-lsm"
BACKEND_LSM_OVERRIDE = "bpf-lsm (override)"

FORCE_OPTION = "hook-backend"

# Attachment phases: where the program runs relative to the hooked function.
ENTER = 0
EXIT = 1

# Emulation modes; bpf/policy.c has the same numbers (EMU_*).
EMU_NONE = 0
EMU_FD_INSTALL = 1      # fd = return value of an open-family syscall, file = that fd's file
EMU_FILE_OPEN = 2       # file = the file the open-family syscall returned
EMU_TCP_CONNECT = 3     # sock = the socket of connect()'s fd, at connect()'s return
EMU_TCP_CLOSE = 4       # sock = skaddr of sock:inet_sock_set_state leaving ESTABLISHED/CLOSE_WAIT
EMU_TCP_SENDMSG = 5     # sock = sk of sock:sock_send_length, size = its byte count

OPEN_SYSCALLS = ("open", "openat", "openat2", "creat")


@dataclass(frozen=True)
class Equivalent:
    mode: int
    attach: tuple[tuple[str, int], ...]   # (tracepoint, phase)
    args: frozenset                       # the function arguments it supplies, by index
    description: str


def _exits(names) -> tuple:
    return tuple((f"syscalls:sys_exit_{n}", EXIT) for n in names)


EQUIVALENTS = {
    "fd_install": Equivalent(
        EMU_FD_INSTALL, _exits(OPEN_SYSCALLS + ("dup",)), frozenset({0, 1}),
        "exits of open/openat/openat2/creat/dup: fd = the return value, file = the new fd's file"),
    "security_file_open": Equivalent(
        EMU_FILE_OPEN, _exits(OPEN_SYSCALLS), frozenset({0}),
        "successful exits of open/openat/openat2/creat: file = the opened file"),
    "tcp_connect": Equivalent(
        EMU_TCP_CONNECT, (("syscalls:sys_enter_connect", ENTER), ("syscalls:sys_exit_connect", EXIT)),
        frozenset({0}),
        "connect() of a TCP socket, at its return (0 or EINPROGRESS), in the caller's context "
        "with the full 4-tuple (sock:inet_sock_set_state CLOSE->SYN_SENT has no source port yet)"),
    "tcp_close": Equivalent(
        EMU_TCP_CLOSE, (("sock:inet_sock_set_state", ENTER),), frozenset({0}),
        "sock:inet_sock_set_state from ESTABLISHED to FIN_WAIT1, from CLOSE_WAIT to LAST_ACK, "
        "or to CLOSE from SYN_SENT/ESTABLISHED/CLOSE_WAIT (the caller's close() or shutdown())"),
    "tcp_sendmsg": Equivalent(
        EMU_TCP_SENDMSG, (("sock:sock_send_length", ENTER),), frozenset({0, 2}),
        "sock:sock_send_length of TCP sockets with bytes sent > 0: sock = sk, size (index 2) = the "
        "byte count"),
}


class PlanError(Exception):
    pass


@dataclass
class Plan:
    backend: str
    attach: list[tuple[str, str, int]] = field(default_factory=list)   # (kind, target, phase)
    mode: int = EMU_NONE
    syscall_wrapper: bool = False     # kprobe/fentry on __x64_sys_*: args behind a pt_regs pointer
    proto: FuncProto | None = None    # fentry/fexit: the function's signature, from BTF
    note: str = ""
    lsm_adapt: tuple[int, ...] = ()   # BACKEND_LSM_OVERRIDE: per "lsm" attach, bpf/policy.c ADAPT_*
    override_arg: int = -1            # BACKEND_LSM_OVERRIDE: the argument its LSM hooks supply ...
    override_class: str = ""          # ... read as this (program.ARG_CLASS)

    def describe(self) -> str:
        points = ", ".join(f"{k} {t}" for k, t, _ in self.attach)
        return f"{self.backend} ({points})" + (f": {self.note}" if self.note else "")


def forced_backend(policy: Policy) -> str:
    for opt in policy.spec.get("options") or ():
        if opt.get("name") == FORCE_OPTION:
            value = opt.get("value", "auto")
            if value not in backends.FORCE_VALUES:
                raise PlanError(f"option {FORCE_OPTION}: {value!r} is not auto, kprobe, fentry or tracepoint")
            return value
    return "auto"


def syscall_name(call: str) -> str:
    for prefix in ("__x64_sys_", "__arm64_sys_", "__ia32_sys_", "__se_sys_", "ksys_", "sys_"):
        if call.startswith(prefix):
            return call[len(prefix):]
    return call


def tracepoint_exists(tracefs: str, target: str) -> bool:
    sub, event = target.split(":", 1)
    return os.path.isdir(os.path.join(tracefs, "events", sub, event))


@functools.lru_cache(maxsize=1)
def _kernel_btf(path: str) -> Btf | None:
    """The kernel's BTF, read once per process (fentry plans need function signatures)."""
    try:
        return Btf.load(path)
    except (OSError, BtfError):
        return None


def _btf(features) -> Btf | None:
    return _kernel_btf(features.btf_path or "/sys/kernel/btf/vmlinux")


def _function_backend(hook: Hook, features, force: str) -> str:
    """The family serving a kprobes: hook: "kprobe" (+kretprobe), "fentry" (fentry or
    fexit) or "tracepoint"; PlanError with every reason when none serves it."""
    in_btf = None

    def ask(kind):
        return backends.choose(features, kind, hook.name, syscall=hook.syscall, force=force,
                               in_btf=in_btf, families=backends.ENGINE_FAMILIES)
    choice = ask("kprobe")
    if choice.backend == "fentry":   # BTF functions only: ask again, knowing
        btf = _btf(features)
        in_btf = btf is not None and btf.has_func(choice.target)
        choice = ask("kprobe")
    if choice.backend is None:
        raise PlanError(f'kprobe "{hook.name}": {choice.reason}')
    if choice.backend == "tracepoint":
        return "tracepoint"
    if hook.needs_return:
        ret = ask("kretprobe")
        want = "kretprobe" if choice.backend == "kprobe" else "fexit"
        if ret.backend != want:
            raise PlanError(f'kprobe "{hook.name}": its return value needs a {want}: {ret.reason}')
    return "kprobe" if choice.backend == "kprobe" else "fentry"


def _fentry_plan(hook: Hook, features, function: str, wrapper: bool) -> Plan:
    """fentry on `function`, or fexit alone when the return value is traced: fexit
    sees the arguments and the return value at once, so nothing is saved at entry
    and the event is the one a kprobe + kretprobe pair gives."""
    proto = _btf(features).func_proto(function)
    if not wrapper:   # a syscall wrapper's one argument is the pt_regs behind which the real ones are
        wide = [i for i, (size, _) in enumerate(proto.params) if size > 8]
        if wide:
            raise PlanError(f'kprobe "{hook.name}": argument {wide[0]} of {function} is a struct '
                            "passed by value, which tetrad's fentry backend does not read")
        missing = sorted({a.index for a in hook.args} - set(range(len(proto.params))))
        if missing:
            raise PlanError(f'kprobe "{hook.name}": {function} has {len(proto.params)} arguments '
                            f"(BTF), no index {missing[0]}")
    point = ("fexit", function, EXIT) if hook.needs_return else ("fentry", function, ENTER)
    return Plan(BACKEND_FENTRY, [point], syscall_wrapper=wrapper, proto=proto)


def _lsm_override_plan(hook: Hook, features, force: str) -> Plan:
    """A kprobe whose Override a BPF LSM equivalent enforces (tetrad/policy/overrides.py)."""
    from . import overrides
    choice = backends.choose_override(features, hook.name, syscall=hook.syscall,
                                      families=backends.ENGINE_OVERRIDE_FAMILIES)
    if choice.backend is None:
        raise PlanError(f'kprobe "{hook.name}": Override cannot be honoured here: {choice.reason}')
    if force != "auto":
        raise PlanError(f'kprobe "{hook.name}": hook-backend={force} forced, but its Override '
                        f"is enforced by BPF LSM ({choice.target})")
    eq = overrides.EQUIVALENTS.get(overrides.function_key(hook.name, hook.syscall))
    if eq is None:   # backends knows the name under a prefix this table does not strip
        raise PlanError(f'kprobe "{hook.name}": Override cannot be honoured here: tetrad has no '
                        "BPF LSM equivalent under this name")
    missing = overrides.unsupplied(hook, eq)
    if missing:
        raise PlanError(f'kprobe "{hook.name}": its Override is enforced by BPF LSM ({eq.targets}), '
                        "which cannot evaluate " + "; ".join(missing))
    return Plan(BACKEND_LSM_OVERRIDE, [("lsm", h, ENTER) for h, _ in eq.hooks],
                note=f"Override enforced by {eq.targets}; {eq.difference}",
                lsm_adapt=tuple(a for _, a in eq.hooks), override_arg=eq.arg,
                override_class=eq.arg_class)


def plan(hook: Hook, features, force: str = "auto", override: bool = False) -> Plan:
    """How `hook` attaches on a kernel with `features` (tetrad/features.py); `override`:
    the policy as written has an Override on it (the same plan in monitor mode, so that
    what is reported is what enforce mode would refuse)."""
    if override and hook.kind == HOOK_KPROBE:
        return _lsm_override_plan(hook, features, force)
    tracefs = features.tracefs or "/sys/kernel/tracing"
    if hook.kind == HOOK_TRACEPOINT:
        target = f"{hook.subsystem}:{hook.event}"
        if not tracepoint_exists(tracefs, target):
            raise PlanError(f'tracepoint "{hook.subsystem}/{hook.event}" does not exist on this kernel')
        return Plan(BACKEND_TRACEPOINT, [("tracepoint", target, ENTER)])
    if hook.kind == HOOK_UPROBE:
        if not features.uprobes:
            raise PlanError(f'uprobe "{hook.name}": this kernel has no uprobes')
        if not os.path.exists(hook.binary):
            raise PlanError(f'uprobe "{hook.name}": {hook.binary} does not exist')
        points = [("uprobe", hook.name, ENTER)]
        if hook.needs_return:
            points.append(("uretprobe", hook.name, EXIT))
        return Plan(BACKEND_UPROBE, points)
    if hook.kind == HOOK_LSM:
        choice = backends.choose(features, "lsm", hook.name)
        if choice.backend is None:
            raise PlanError(f'{hook.path}.hook: lsmhook "{hook.name}": {choice.reason}')
        return Plan(BACKEND_LSM, [("lsm", hook.name, ENTER)])
    assert hook.kind == HOOK_KPROBE
    family = _function_backend(hook, features, force)
    use_kprobe = family == "kprobe"
    if family == "fentry":
        fn = backends.syscall_function(syscall_name(hook.name)) if hook.syscall else hook.name
        return _fentry_plan(hook, features, fn, wrapper=hook.syscall and fn.startswith("__"))
    if hook.syscall:
        name = syscall_name(hook.name)
        if use_kprobe:
            fn = backends.syscall_function(name)
            points = [("kprobe", fn, ENTER)] + ([("kretprobe", fn, EXIT)] if hook.needs_return else [])
            return Plan(BACKEND_KPROBE, points, syscall_wrapper=fn.startswith("__"))
        enter = f"syscalls:sys_enter_{name}"
        if not tracepoint_exists(tracefs, enter):
            raise PlanError(f'kprobe "{hook.name}": no syscall {name!r} on this kernel '
                            f"(no tracepoint syscalls/sys_enter_{name})")
        points = [("tracepoint", enter, ENTER)]
        if hook.needs_return:
            points.append(("tracepoint", f"syscalls:sys_exit_{name}", EXIT))
        return Plan(BACKEND_SYSCALL_TP, points)
    if use_kprobe:
        points = [("kprobe", hook.name, ENTER)] + ([("kretprobe", hook.name, EXIT)] if hook.needs_return else [])
        return Plan(BACKEND_KPROBE, points)
    eq = EQUIVALENTS[hook.name]   # choose() picks a tracepoint only where one is known
    missing = sorted({a.index for a in hook.args} - eq.args)
    if missing:
        raise PlanError(f'kprobe "{hook.name}": its tracepoint equivalent supplies arguments '
                        f"{sorted(eq.args)}, not {missing}")
    if hook.needs_return:
        raise PlanError(f'kprobe "{hook.name}": its tracepoint equivalent has no return value')
    points = [(("tracepoint", tp, phase)) for tp, phase in eq.attach if tracepoint_exists(tracefs, tp)]
    if len(points) < len(eq.attach) if eq.mode == EMU_TCP_CONNECT else not points:
        raise PlanError(f'kprobe "{hook.name}": the tracepoints of its equivalent are missing on this kernel')
    return Plan(BACKEND_EQUIVALENT, points, mode=eq.mode, note=eq.description)
