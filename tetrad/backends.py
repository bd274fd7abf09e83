"""Which BPF mechanism serves a hook: the one rule, in one place.

A TracingPolicy names hooks the way Tetragon does (``kprobes:`` with ``call: fd_install`` or
``call: sys_write`` + ``syscall: true``, ``tracepoints:``, ``lsmhooks:``, ``uprobes:``).  The
kernel decides what can serve them.  ``choose()`` is a pure function of the detected
``Features`` and the hook (no I/O), so the policy engine, ``tetrad probe`` and the tests all
get the same answer, with the reason for it.

The rule, per hook kind (first available wins):

* ``kprobe`` (function entry): kprobe, as Tetragon does (any kallsyms symbol, arguments by
  register like Tetragon's argument indexes) -> fentry (when kprobes are missing but BPF
  trampolines load, and the function is in BTF) -> a tracepoint equivalent
  (``syscalls:sys_enter_<name>`` for a syscall, a known tracepoint for a few kernel functions).
* ``kretprobe`` (function return): kretprobe -> fexit -> ``syscalls:sys_exit_<name>``.
* ``lsm`` (``lsmhooks:``): BPF LSM only; there is no faithful substitute (a kprobe cannot
  deny), so the hook is refused with the reason.
* ``tracepoint`` / ``raw_tracepoint`` / ``uprobe``: themselves, when the kernel has them.

Why kprobes first where both load: Tetragon's policies are written for kprobes (any
kallsyms symbol, not only BTF functions), so that is what their authors tested; fentry/fexit
serve the same hooks with the same events where kprobes are missing, or when forced.

``families`` are the mechanisms the caller can attach.  The policy engine
(tetrad/policy/hooks.py) attaches all three and calls ``choose()`` with ``ENGINE_FAMILIES``
and its own table of tracepoint equivalents (the default table here), as ``tetrad probe``
does: so what probe previews, what ``tetrad tracingpolicy list`` shows and what is attached
are one decision.  The lane's mechanism checks (tests/test_kernel_hooks.py) ask about every
family.

Override on a function hook (``kprobes:`` with an ``Override`` action) is a second question,
answered by ``choose_override()``: ``bpf_override_return`` where the kernel has it and the
function is error-injectable -> the function's BPF LSM equivalent (tetrad/policy/overrides.py)
where BPF LSM loads -> refused, naming what is missing.  The policy engine does not use
``bpf_override_return`` yet (``ENGINE_OVERRIDE_FAMILIES``): neither the development kernel nor
Debian's have it, so it could not be tested.

``force`` (the ``--hook-backend`` flag, or a policy's ``hook-backend`` option) pins one
backend family for function hooks (``kprobes:``, the only kind with several mechanisms; the
other kinds have exactly one).  If the kernel cannot provide it the hook is refused and the
reason says so, never silently served by something else.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

__all__ = ["Choice", "ENGINE_FAMILIES", "ENGINE_OVERRIDE_FAMILIES", "FAMILIES", "FORCE_VALUES",
           "HOOK_KINDS", "OVERRIDE_FAMILIES", "choose", "choose_override", "engine_equivalents",
           "lsm_override_equivalents", "syscall_function", "summary"]

HOOK_KINDS = ("kprobe", "kretprobe", "lsm", "tracepoint", "raw_tracepoint", "uprobe")
# Values of --hook-backend: "auto" applies the rule; the others pin a family.
FORCE_VALUES = ("auto", "kprobe", "fentry", "tracepoint")

# Mechanism families for function hooks, in order of preference.
FAMILIES = ("kprobe", "fentry", "tracepoint")
ENGINE_FAMILIES = FAMILIES   # what the policy engine attaches


def engine_equivalents() -> dict[str, tuple[str, str]]:
    """The policy engine's tracepoint equivalents of kernel functions:
    function -> (its tracepoints, how the equivalent differs)."""
    from .policy.hooks import EQUIVALENTS   # late: the engine imports this module
    return {name: (", ".join(tp for tp, _ in eq.attach), eq.description)
            for name, eq in EQUIVALENTS.items()}

# Mechanisms that make a function call fail (Override), in order of preference.
OVERRIDE_FAMILIES = ("override_return", "bpf_lsm")
ENGINE_OVERRIDE_FAMILIES = ("bpf_lsm",)   # what the policy engine uses today


def lsm_override_equivalents() -> dict[str, tuple[str, str]]:
    """Functions whose Override a BPF LSM hook can enforce: function (syscalls as
    sys_<name>) -> (its LSM hooks, how the meaning differs)."""
    from .policy.overrides import EQUIVALENTS   # late: the engine imports this module
    return {name: (eq.targets, eq.difference) for name, eq in EQUIVALENTS.items()}

# Per-architecture prefix of syscall entry functions (what a kprobe on a syscall attaches to).
_SYSCALL_PREFIX = {"x86_64": "__x64_sys_", "aarch64": "__arm64_sys_", "s390x": "__s390x_sys_",
                   "riscv64": "__riscv_sys_"}


@dataclass(frozen=True)
class Choice:
    """The backend chosen for one hook; ``backend`` is None when nothing here can serve it."""

    kind: str
    name: str
    backend: str | None
    target: str  # what is attached: function, "category:tracepoint", or "" when refused
    reason: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "backend": self.backend,
                "target": self.target, "reason": self.reason}


def syscall_function(name: str, machine: str | None = None) -> str:
    """The kernel function behind syscall `name` ("sys_write", "write" -> "__x64_sys_write")."""
    bare = _bare_syscall(name)
    prefix = _SYSCALL_PREFIX.get(machine or platform.machine(), "sys_")
    return prefix + bare


def _bare_syscall(name: str) -> str:
    for prefix in (*_SYSCALL_PREFIX.values(), "sys_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _why_not(features, capability: str) -> str:
    return features.notes.get(capability) or f"{capability} not available"


def choose(features, kind: str, name: str = "", *, syscall: bool = False,
           force: str = "auto", in_btf: bool | None = None,
           equivalents: dict[str, tuple[str, str]] | None = None,
           families: tuple[str, ...] = FAMILIES) -> Choice:
    """Pick the backend for one hook.

    `features` is a tetrad.features.Features; `in_btf` says whether the function has a BTF
    FUNC record (None: unknown, assumed yes: fentry's own load check will say otherwise).
    """
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r} (one of {', '.join(HOOK_KINDS)})")
    if force not in FORCE_VALUES:
        raise ValueError(f"unknown hook backend {force!r} (one of {', '.join(FORCE_VALUES)})")
    equivalents = engine_equivalents() if equivalents is None else equivalents

    def pick(backend, target, reason):
        return Choice(kind, name, backend, target, reason)

    def refuse(reason):
        return Choice(kind, name, None, "", reason)

    if kind in ("kprobe", "kretprobe"):
        return _choose_function(features, kind, name, syscall, force, in_btf, equivalents, families)
    if kind == "lsm":
        if features.bpf_lsm:
            return pick("bpf_lsm", name, "BPF LSM loads on this kernel")
        return refuse(f"BPF LSM unavailable: {_why_not(features, 'bpf_lsm')}; "
                      "a kprobe cannot deny, so lsmhooks are not emulated")
    if kind == "tracepoint":
        if features.tracepoints:
            return pick("tracepoint", name, "tracefs has tracepoints")
        return refuse(_why_not(features, "tracepoints"))
    if kind == "raw_tracepoint":
        if features.raw_tracepoints:
            return pick("raw_tracepoint", name, "raw tracepoints load")
        return refuse(_why_not(features, "raw_tracepoints"))
    if features.uprobes:  # uprobe
        return pick("uprobe", name, "uprobes attach")
    return refuse(_why_not(features, "uprobes"))


def _choose_function(features, kind, name, syscall, force, in_btf, equivalents, families) -> Choice:
    """kprobe/kretprobe hooks: the first available of kprobe, fentry, tracepoint."""
    ret = kind == "kretprobe"
    function = syscall_function(name) if syscall else name
    probe_cap = "kretprobes" if ret else "kprobes"
    # (family, backend, attach target, available, why not)
    candidates = [("kprobe", kind, function, getattr(features, probe_cap),
                   _why_not(features, probe_cap))]
    fentry_why = (f"{function} has no BTF FUNC record" if features.fentry
                  else _why_not(features, "fentry"))
    candidates.append(("fentry", "fexit" if ret else "fentry", function,
                       features.fentry and in_btf is not False, fentry_why))
    caveat = ""
    if syscall:
        tp = f"syscalls:sys_{'exit' if ret else 'enter'}_{_bare_syscall(name)}"
        candidates.append(("tracepoint", "tracepoint", tp, features.syscall_tracepoints,
                           _why_not(features, "syscall_tracepoints")))
    elif not ret and name in equivalents:
        tp, caveat = equivalents[name]
        candidates.append(("tracepoint", "tracepoint", tp, features.tracepoints,
                           _why_not(features, "tracepoints")))
    else:
        candidates.append(("tracepoint", "tracepoint", "", False,
                           f"no tracepoint equivalent of {name or 'this function'}"
                           + (" return" if ret else "")))

    if force != "auto" and force not in families:
        return Choice(kind, name, None, "", f"hook-backend={force} forced, but tetrad's policy "
                                            f"engine has no {force} backend yet")
    candidates = [c for c in candidates if c[0] in families]
    if force != "auto":
        family, backend, target, ok, why = next(c for c in candidates if c[0] == force)
        if ok:
            return Choice(kind, name, backend, target, f"forced by hook-backend={force}")
        return Choice(kind, name, None, "", f"hook-backend={force} forced, but {why}")
    refused = []
    for family, backend, target, ok, why in candidates:
        if ok:
            reason = "; ".join(refused) or "preferred"
            if caveat and family == "tracepoint":
                reason += f"; equivalent with a difference: {caveat}"
            return Choice(kind, name, backend, target, reason)
        refused.append(f"no {family}: {why}")
    return Choice(kind, name, None, "", "; ".join(refused))


def choose_override(features, name: str, *, syscall: bool = False,
                    error_injectable: bool | None = None,
                    equivalents: dict[str, tuple[str, str]] | None = None,
                    families: tuple[str, ...] = OVERRIDE_FAMILIES) -> Choice:
    """What makes a call of function `name` fail for an Override: bpf_override_return,
    its BPF LSM equivalent, or nothing (backend None, the reason naming both).
    `error_injectable`: whether the function is on the kernel's error-injection list
    (None: unknown, assumed yes)."""
    equivalents = lsm_override_equivalents() if equivalents is None else equivalents
    function = syscall_function(name) if syscall else name
    key = "sys_" + _bare_syscall(name) if syscall else name
    candidates = [
        ("override_return", function,
         features.override_return and error_injectable is not False,
         f"{function} is not error-injectable" if features.override_return
         else _why_not(features, "override_return")),
    ]
    if key in equivalents:
        targets, difference = equivalents[key]
        candidates.append(("bpf_lsm", targets, features.bpf_lsm,
                           _why_not(features, "bpf_lsm") + f" (its equivalent: {targets})"))
    else:
        difference = ""
        candidates.append(("bpf_lsm", "", False, f"no BPF LSM hook stands in for {key}"))
    refused = []
    for family, target, ok, why in candidates:
        if not ok:
            refused.append(f"no {family}: {why}")
        elif family not in families:
            refused.append(f"no {family}: the kernel has it, tetrad's policy engine does not use it yet")
        else:
            reason = "; ".join(refused) or "preferred"
            if family == "bpf_lsm":
                reason += f"; equivalent with a difference: {difference}"
            return Choice("override", name, family, target, reason)
    return Choice("override", name, None, "", "; ".join(refused))


# Hooks shown by `tetrad probe`: one per kind, syscall and plain function apart.
SAMPLE_HOOKS = (
    ("kprobe", "sys_write", True),
    ("kprobe", "fd_install", False),
    ("kprobe", "tcp_connect", False),
    ("kretprobe", "sys_write", True),
    ("kretprobe", "fd_install", False),
    ("lsm", "file_open", False),
    ("tracepoint", "sched:sched_process_exec", False),
    ("uprobe", "libc:getaddrinfo", False),
)


def summary(features, force: str = "auto", has_func=None) -> list[Choice]:
    """What the policy engine would attach for each sample hook; `has_func(name)` answers
    BTF questions if given."""
    out = []
    for kind, name, syscall in SAMPLE_HOOKS:
        in_btf = None
        if has_func is not None and kind in ("kprobe", "kretprobe"):
            in_btf = has_func(syscall_function(name) if syscall else name)
        out.append(choose(features, kind, name, syscall=syscall, force=force, in_btf=in_btf,
                          families=ENGINE_FAMILIES))
    return out
