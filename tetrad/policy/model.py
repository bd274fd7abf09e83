"""A loaded TracingPolicy: its hooks, their arguments and selectors.

Built from a document that passed validation (tetrad/policy/validate.py), so
the constructors here trust field presence and types.  Selectors stay in
Tetragon's own shape (dicts with `matchArgs`, `matchActions`, ...): the BPF
side (tetrad/policy/program.py) turns them into map values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HOOK_KPROBE = "kprobe"
HOOK_TRACEPOINT = "tracepoint"
HOOK_UPROBE = "uprobe"
HOOK_LSM = "lsm"

# the event type each hook kind produces
EVENT_TYPES = {HOOK_KPROBE: "process_kprobe", HOOK_TRACEPOINT: "process_tracepoint",
               HOOK_UPROBE: "process_uprobe", HOOK_LSM: "process_lsm"}


@dataclass(frozen=True)
class Arg:
    index: int
    type: str
    size_arg_index: int = 0     # 1-based, as in Tetragon; 0 = none
    return_copy: bool = False
    max_data: bool = False
    label: str = ""

    @classmethod
    def from_spec(cls, a: dict) -> "Arg":
        return cls(index=a["index"], type=a.get("type", "auto"),
                   size_arg_index=a.get("sizeArgIndex", 0), return_copy=a.get("returnCopy", False),
                   max_data=a.get("maxData", False), label=a.get("label", ""))


@dataclass
class Hook:
    kind: str                 # HOOK_KPROBE, HOOK_TRACEPOINT, HOOK_UPROBE, HOOK_LSM
    name: str                 # kprobe call, "subsystem/event", "path:symbol", or LSM hook
    path: str                 # where in the document: "spec.kprobes[0]"
    args: tuple[Arg, ...] = ()
    syscall: bool = False
    return_arg: Arg | None = None
    selectors: tuple[dict, ...] = ()
    message: str = ""
    tags: tuple[str, ...] = ()
    subsystem: str = ""       # tracepoints
    event: str = ""
    binary: str = ""          # uprobes
    symbol: str = ""
    backend: str = ""         # chosen at planning: "kprobe", "syscall-tracepoints", ...

    @property
    def event_type(self) -> str:
        return EVENT_TYPES[self.kind]

    @property
    def needs_return(self) -> bool:
        return self.return_arg is not None or any(a.return_copy for a in self.args)


@dataclass
class Policy:
    name: str
    kind: str                 # TracingPolicy or TracingPolicyNamespaced
    file: str                 # as shown to users: relative to the policy directory
    document: int | None      # index of the YAML document in the file (None: a Kubernetes object)
    spec: dict
    namespace: str = ""
    hooks: list[Hook] = field(default_factory=list)

    @property
    def where(self) -> str:
        return self.file if self.document is None else f"{self.file}[{self.document}]"


def hooks_of(spec: dict) -> list[Hook]:
    hooks = []
    for i, k in enumerate(spec.get("kprobes") or ()):
        ret = k.get("returnArg") if k.get("return") else None
        hooks.append(Hook(
            kind=HOOK_KPROBE, name=k["call"], path=f"spec.kprobes[{i}]",
            args=tuple(Arg.from_spec(a) for a in k.get("args") or ()), syscall=k.get("syscall", False),
            return_arg=Arg.from_spec(ret) if ret else None,
            selectors=tuple(k.get("selectors") or ()), message=k.get("message", ""),
            tags=tuple(k.get("tags") or ())))
    for i, t in enumerate(spec.get("tracepoints") or ()):
        hooks.append(Hook(
            kind=HOOK_TRACEPOINT, name=f"{t['subsystem']}/{t['event']}", path=f"spec.tracepoints[{i}]",
            args=tuple(Arg.from_spec(a) for a in t.get("args") or ()),
            selectors=tuple(t.get("selectors") or ()), message=t.get("message", ""),
            tags=tuple(t.get("tags") or ()), subsystem=t["subsystem"], event=t["event"]))
    for i, h in enumerate(spec.get("lsmhooks") or ()):
        hooks.append(Hook(
            kind=HOOK_LSM, name=h["hook"], path=f"spec.lsmhooks[{i}]",
            args=tuple(Arg.from_spec(a) for a in h.get("args") or ()),
            selectors=tuple(h.get("selectors") or ()), message=h.get("message", ""),
            tags=tuple(h.get("tags") or ())))
    for i, u in enumerate(spec.get("uprobes") or ()):
        for sym in u.get("symbols") or ():
            hooks.append(Hook(
                kind=HOOK_UPROBE, name=f"{u['path']}:{sym}", path=f"spec.uprobes[{i}]",
                args=tuple(Arg.from_spec(a) for a in u.get("args") or ()),
                selectors=tuple(u.get("selectors") or ()), message=u.get("message", ""),
                tags=tuple(u.get("tags") or ()), binary=u["path"], symbol=sym))
    return hooks
