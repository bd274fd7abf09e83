"""One loaded policy: an instance of bpf/policy.c, its maps filled from the
policy (tetrad/policy/hooks.py says where each hook attaches), its programs
attached, and its own ring buffer.

Everything a selector compares against lives in maps, keyed by a "slot"
number derived from (hook, selector, match): bpf/policy.c computes the same
numbers.  Nothing of the policy is compiled into the C, so policies of one
shape (4 or 16 hook slots, kprobe programs or not, the same lsmhooks) are
instances of one compiled template (see tetrad/bpf_template.py): only the
first of them waits for clang.

The maps hold two configurations.  `reconfigure()` writes a changed policy
into the one not in force and then switches: a change that keeps every hook
where it is attached (values, operators, selectors, actions, argument
types, messages) keeps the programs, their attachments and their state
(followed fds, saved entries), and each event is judged by the old
configuration or the new one, never by a mix.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import logging
import os
import time
from dataclasses import dataclass

from ..bpf_loader import compile_program
from ..bpf_template import TemplateCache, TemplateError
from . import fentry
from . import hooks as hooks_mod
from . import follow, lsm
from .hooks import ENTER, EXIT, Plan
from .model import HOOK_KPROBE, HOOK_LSM, HOOK_TRACEPOINT, Hook, Policy
from .validate import parse_rate_limit

log = logging.getLogger("tetrad.policy")

MAX_HOOKS = 16
HOOK_CLASSES = (4, MAX_HOOKS)   # a template's number of hook slots: the compile grows with it
MAX_SELECTORS = 5
POS_RET = 5

# bpf/policy.c enums
ARG_CLASS = {
    "int": 3, "sint32": 3, "int32": 3, "uint32": 4, "sint16": 5, "int16": 5, "uint16": 6,
    "sint8": 7, "int8": 7, "uint8": 8, "long": 1, "sint64": 1, "int64": 1, "syscall64": 1,
    "ulong": 2, "uint64": 2, "size_t": 2, "auto": 2, "string": 9, "char_buf": 10, "fd": 11,
    "file": 12, "path": 13, "sock": 14, "sockaddr": 15, "nop": 0,
}
SIGNED_TYPES = {"int", "sint32", "int32", "sint16", "int16", "sint8", "int8", "long", "sint64",
                "int64", "syscall64"}
OPS = {
    "Equal": 1, "NotEqual": 2, "Prefix": 3, "NotPrefix": 4, "Postfix": 5, "NotPostfix": 6,
    "GreaterThan": 7, "GT": 7, "LessThan": 8, "LT": 8, "Mask": 9, "InRange": 10,
    "NotInRange": 11, "SPort": 12, "NotSPort": 13, "SPortPriv": 14, "NotSPortPriv": 15,
    "NotSportPriv": 15, "DPort": 16, "NotDPort": 17, "DPortPriv": 18, "NotDPortPriv": 19, "SAddr": 20,
    "NotSAddr": 21, "DAddr": 22, "NotDAddr": 23, "Protocol": 24, "Family": 25, "In": 26,
    "NotIn": 27,
}
ACTIONS = {"Post": 1, "NoPost": 2, "FollowFD": 3, "UnfollowFD": 4, "CopyFD": 5, "Signal": 6,
           "Sigkill": 7, "Override": 8}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
HOOKF_AT_EXIT, HOOKF_KPROBE, HOOKF_SYSCALL_WRAPPER, HOOKF_FD_GATE, HOOKF_PREFIX_GATE = 1, 2, 4, 8, 16
PREFIX_GATE_SLOT = 0x10000   # + hook slot: the str_prefix slot of a hook's prefix gate
ARGF_RETURN_COPY = 1
RUNNER_STAGES = ("start", "arg", "select", "rest")
MAX_LSM_HOOKS = 4       # bpf/policy.c: each lsmhook has its own programs
LSM_LETTERS = "abcd"    # lsmhook i's programs are ls<E|S|A|L|R><letter>_<hook>
LSM_STAGE_PREFIX = "SALR"   # start, arg, select, rest
MAX_FENTRY_GROUPS = 4   # bpf/policy.c: fentry hooks of one prototype and end share programs
KPROBE_CTX_BACKENDS = (hooks_mod.BACKEND_KPROBE, hooks_mod.BACKEND_UPROBE)   # ctx: struct pt_regs
# loaded and attached by their own loaders (lsm.py, fentry.py), not by _attach nor a stage chain
SELF_LOADED_BACKENDS = (hooks_mod.BACKEND_LSM, hooks_mod.BACKEND_LSM_OVERRIDE, hooks_mod.BACKEND_FENTRY)
CONSUME_BUDGET = 4096   # records handled per wakeup of one ring buffer
NAMESPACE_INDEX = {"Uts": 0, "Ipc": 1, "Mnt": 2, "Pid": 3, "PidForChildren": 4, "Net": 5,
                   "Time": 6, "TimeForChildren": 7, "Cgroup": 8, "User": 9}
NAMESPACE_PROC = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time",
                  "time_for_children", "cgroup", "user")
CAP_SETS = {"Effective": 0, "Inheritable": 1, "Permitted": 2}
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
PROTOCOLS = {"IPPROTO_ICMP": 1, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_RAW": 255}
STRING_CLASSES = {9, 10, 11, 12, 13}
PATH_CLASSES = {12, 13}   # file, path: built from dentries in the kernel
SOCK_CLASSES = {14, 15}
CONFIGURATIONS = 2      # bpf/policy.c: hooks, selectors and values twice, settings[0] says which
MATCH_SLOTS = 8         # value slots per selector (matchArgs, matchReturnArgs, binaries, parents)
PID_SLOTS = 2           # pid_set slots per selector
MAX_ACTIONS = 3         # rate_last slots per selector
RECF_CONF1 = 2          # bpf/policy.c: the record was judged by configuration 1
# the maps keyed by a selector's slots: (name, slots per selector)
SLOT_MAPS = (("str_eq", MATCH_SLOTS), ("str_prefix", MATCH_SLOTS), ("str_postfix", MATCH_SLOTS),
             ("addr_trie", MATCH_SLOTS), ("pid_set", PID_SLOTS), ("rate_last", MAX_ACTIONS))


class ProgramError(Exception):
    pass


@dataclass
class Field:
    name: str
    offset: int
    size: int
    signed: bool
    type: str


@functools.lru_cache(maxsize=256)
def tracepoint_fields(tracefs: str, target: str) -> tuple[Field, ...]:
    """The fields of a tracepoint's format file, common_* included (Tetragon's
    tracepoint `index` counts them).  Read once per process: a format does not
    change while the kernel runs, and each change of a policy's values asks again."""
    sub, event = target.split(":", 1)
    fields = []
    with open(os.path.join(tracefs, "events", sub, event, "format")) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("field:"):
                continue
            parts = dict(p.strip().split(":", 1) for p in line.split(";") if ":" in p)
            decl = parts["field"].strip()
            name = decl.split()[-1].split("[")[0]
            fields.append(Field(name, int(parts["offset"]), int(parts["size"]),
                                parts.get("signed", "0").strip() == "1", decl))
    return tuple(fields)


def _syscall_arg_fields(tracefs: str, target: str) -> list[Field]:
    return [f for f in tracepoint_fields(tracefs, target)
            if not f.name.startswith("common_") and f.name != "__syscall_nr"]


def _field(fields: list[Field], name: str) -> Field:
    for f in fields:
        if f.name == name:
            return f
    raise ProgramError(f"field {name!r} missing from the tracepoint")


def cap_mask(names) -> int:
    from ..process.model import CAPABILITIES
    mask = 0
    for n in names:
        name = n if n.startswith("CAP_") else "CAP_" + n
        for bit, cap in enumerate(CAPABILITIES):
            if cap == name or "CAP_" + cap == name:
                mask |= 1 << bit
                break
        else:
            raise ProgramError(f"unknown capability {n!r}")
    return mask


def host_ns(name: str, procfs: str = "/proc") -> int:
    """host_ns of matchNamespaces: PID 1's namespace of that kind; the daemon's
    own where PID 1's cannot be read (a sandbox that hides PID 1: the daemon
    then runs in the host's)."""
    ns = NAMESPACE_PROC[NAMESPACE_INDEX[name]]
    try:
        return os.stat(f"{procfs}/1/ns/{ns}").st_ino
    except OSError:
        log.warning("cannot read %s/1/ns/%s; host_ns is the daemon's own %s namespace", procfs, ns, ns)
        return os.stat(f"/proc/self/ns/{ns}").st_ino


def attachment(policy: Policy, plans: list[Plan]) -> tuple:
    """Where a policy's programs attach, hook by hook: two policies with the
    same can share programs (PolicyProgram.reconfigure)."""
    return tuple((h.kind, h.name, h.binary, h.symbol, p.backend, tuple(p.attach))
                 for h, p in zip(policy.hooks, plans))


def follows_children(policy: Policy) -> bool:
    """Whether a selector has matchBinaries/matchParentBinaries followChildren."""
    return any(b.get("followChildren") for h in policy.hooks for sel in h.selectors
               for key in ("matchBinaries", "matchParentBinaries") for b in sel.get(key) or ())


def prefix_gate(hook: Hook) -> tuple[int, list[str]] | None:
    """(position, values) when every selector of the hook needs the file or
    path at that position to start with one of its Prefix values: the union
    of those values then decides in bpf/policy.c's prefix gate, from the
    path's first bytes, that most paths match no selector."""
    positions = PolicyProgram._positions(hook)
    gate_pos, union = None, []
    for sel in hook.selectors:
        for m in sel.get("matchArgs") or ():
            pos = positions[m.get("index", 0)]
            if m["operator"] == "Prefix" and gate_pos in (None, pos) \
                    and ARG_CLASS.get(hook.args[pos].type) in PATH_CLASSES:
                gate_pos = pos
                union += [str(v) for v in m.get("values") or ()]
                break
        else:
            return None
    # an empty value is a prefix of every path: no gate then
    if gate_pos is None or not union or not all(union):
        return None
    return gate_pos, union


class PolicyProgram:
    """The BPF side of one policy.  `on_record(policy_program, bytes)` gets each record."""

    def __init__(self, policy: Policy, plans: list[Plan], macros: dict, rb_pages: int,
                 tracefs: str, procfs: str = "/proc", templates: TemplateCache | None = None):
        """With `templates`, an instance of the template for this program
        (compiled if it is the first); without, or where this BCC cannot make
        instances, a compile of its own."""
        if len(policy.hooks) > MAX_HOOKS:
            raise ProgramError(f"{len(policy.hooks)} hooks; tetrad loads at most {MAX_HOOKS} per policy")
        self.policy = policy
        self.plans = plans
        self.tracefs = tracefs
        self.procfs = procfs
        started = time.monotonic()
        # (slot, hook, BPF LSM hook, ADAPT_*): lsmhooks, and the LSM equivalents of Overrides
        self.lsm_hooks = [(slot, h, target, (plan.lsm_adapt or (0,) * len(plan.attach))[n])
                          for slot, (h, plan) in enumerate(zip(policy.hooks, plans))
                          for n, (kind, target, _) in enumerate(plan.attach) if kind == "lsm"]
        if len(self.lsm_hooks) > MAX_LSM_HOOKS:
            raise ProgramError(f"{len(self.lsm_hooks)} BPF LSM hooks (lsmhooks and the LSM equivalents "
                               f"of Overrides); tetrad loads at most {MAX_LSM_HOOKS} per policy")
        lsm_macros = {}
        for i, (slot, hook, target, adapt) in enumerate(self.lsm_hooks):
            lsm_macros[f"LSM_HOOK_{i}"], lsm_macros[f"LSM_SLOT_{i}"] = target, slot
            lsm_macros[f"LSM_ADAPT_{i}"] = adapt
        self._lsm_fds: list[int] = []   # LSM programs and their links, closed by close()
        self.fentry_groups = self._fentry_groups(policy, plans)
        # the tracepoint ("tp") and kprobe/uprobe ("kp") stage chains its hooks run
        self.runners = {"kp" if p.backend in KPROBE_CTX_BACKENDS else "tp" for p in plans
                        if p.backend not in SELF_LOADED_BACKENDS}
        self._fentry_fds: list[int] = []   # fentry/fexit programs and their links, likewise
        macros = {**macros, **lsm_macros, "RB_PAGES": rb_pages,
                  **{f"WITHOUT_{r.upper()}": 1 for r in ("tp", "kp") if r not in self.runners}}
        self.follows_children = follows_children(policy)
        if self.follows_children:
            macros = {**macros, "FOLLOW_CHILDREN": 1}
        self.bpf = None
        if templates is not None:
            # sizes in a few classes, so that policies share templates
            self.nhooks = next(n for n in HOOK_CLASSES if n >= len(policy.hooks))
            try:
                self.bpf, self.compile_s = templates.instance(
                    "policy.c", {**macros, **self._fentry_macros(), "NHOOKS": self.nhooks})
            except TemplateError:   # said once by the cache: compiled below
                pass
            except OSError as e:   # its maps
                raise ProgramError(str(e)) from e
            except Exception as e:
                raise ProgramError(f"BPF compile failed: {e}") from e
        if self.bpf is None:
            self.nhooks = max(1, len(policy.hooks))
            try:
                self.bpf = compile_program("policy.c", {**macros, **self._fentry_macros(),
                                                        "NHOOKS": self.nhooks})
            except Exception as e:
                raise ProgramError(f"BPF compile failed: {e}") from e
            self.compile_s = time.monotonic() - started
        self.conf = 0          # the configuration in force
        self.enabled = False   # until load() is done
        self._cb = None
        self._budget = CONSUME_BUDGET

    @staticmethod
    def _fentry_groups(policy: Policy, plans: list[Plan]) -> list[list[int]]:
        """The slots of fentry hooks, grouped by (function prototype, end): the hooks of
        a group share one set of stage programs (a tracing program tail-calls only
        programs of its own prototype)."""
        groups: dict[tuple, list[int]] = {}
        for slot, plan in enumerate(plans):
            if plan.backend == hooks_mod.BACKEND_FENTRY:
                groups.setdefault((plan.proto.proto_id, plan.attach[0][0]), []).append(slot)
        if len(groups) > MAX_FENTRY_GROUPS:
            raise ProgramError(f"its fentry/fexit hooks need {len(groups)} program sets (one per "
                               f"function prototype and end); tetrad loads at most "
                               f"{MAX_FENTRY_GROUPS} per policy")
        return list(groups.values())

    def _fentry_macros(self) -> dict:
        if not self.fentry_groups:
            return {}
        out = {"FENTRY_GROUPS": len(self.fentry_groups)}
        group_of = {slot: g for g, slots in enumerate(self.fentry_groups) for slot in slots}
        for slot in range(self.nhooks):   # every slot the program has
            out[f"FENTRY_GROUP_{slot}"] = group_of.get(slot, MAX_FENTRY_GROUPS)
        return out

    # -- configuration ------------------------------------------------------
    def load(self) -> None:
        """Fill the maps, then attach (the programs see a complete configuration)."""
        from bcc import BPF
        settings = self.bpf["settings"]
        settings[ctypes.c_int(0)] = ctypes.c_uint32(0)
        settings[ctypes.c_int(1)] = ctypes.c_uint32(os.getpid())
        # followChildren sections, in the order of their bits: (string-set slot, listed binaries)
        self._follow: list[tuple[int, frozenset[str]]] = []
        self._configure(self.policy, self.plans, self.conf)
        kinds = [(prefix, ptype) for prefix, ptype in (("tp", BPF.TRACEPOINT), ("kp", BPF.KPROBE))
                 if prefix in self.runners]
        for prefix, ptype in kinds:
            runners = self.bpf[f"{prefix}_runners"]
            for i, stage in enumerate(RUNNER_STAGES):
                fn = self.bpf.load_func(f"{prefix}_{stage}", ptype)
                runners[ctypes.c_int(i)] = ctypes.c_int(fn.fd)
        if self._follow:
            self._start_following()
        for i, (slot, hook, target, _) in enumerate(self.lsm_hooks):
            self._load_lsm(i, hook, target)
        for g, slots in enumerate(self.fentry_groups):
            self._load_fentry(g, slots)
        for slot, (hook, plan) in enumerate(zip(self.policy.hooks, self.plans)):
            if plan.backend not in SELF_LOADED_BACKENDS:
                self._attach(slot, hook, plan)
        self.set_enabled(True)

    def reconfigure(self, policy: Policy, plans: list[Plan]) -> bool:
        """Run `policy` on these programs if it attaches where they are
        attached (False: it needs programs of its own).  Its configuration is
        written next to the one in force, then put in force at once."""
        if attachment(policy, plans) != attachment(self.policy, self.plans):
            return False
        if self.follows_children or follows_children(policy):
            return False   # which processes are followed is the policy's, not a configuration's
        new = 1 - self.conf
        self._clear(new)
        self._configure(policy, plans, new)
        self.conf, self.policy, self.plans = new, policy, plans
        if self.enabled:
            self.set_enabled(True)
        return True

    def conf_of(self, record_flags: int) -> int:
        """The configuration a record was judged by."""
        return 1 if record_flags & RECF_CONF1 else 0

    def _configure(self, policy: Policy, plans: list[Plan], conf: int) -> None:
        for slot, (hook, plan) in enumerate(zip(policy.hooks, plans)):
            self._configure_hook(slot + self.nhooks * conf, hook, plan)

    def _clear(self, conf: int) -> None:
        """Drop what configuration `conf` left in the slot-keyed maps (the
        hooks and selectors arrays are overwritten whole)."""
        per_conf = self.nhooks * MAX_SELECTORS
        # the prefix gates' values live in str_prefix too, one slot per hook configuration
        gates = range(PREFIX_GATE_SLOT + conf * self.nhooks, PREFIX_GATE_SLOT + (conf + 1) * self.nhooks)
        for name, per_selector in SLOT_MAPS:
            table = self.bpf[name]
            low, high = conf * per_conf * per_selector, (conf + 1) * per_conf * per_selector
            extra = gates if name == "str_prefix" else ()
            for key in [k for k in table.keys() if low <= k.slot < high or k.slot in extra]:
                del table[key]

    def _load_lsm(self, i: int, hook: Hook, target: str) -> None:
        """BPF LSM hook i (on `target`): its stages into its own program array, then its entry attached."""
        letter = LSM_LETTERS[i]
        try:
            runners = self.bpf[f"lsm_runners{i}"]
            for n, stage in enumerate(LSM_STAGE_PREFIX):
                fd = lsm.load(self.bpf, f"ls{stage}{letter}_{target}", target)
                self._lsm_fds.append(fd)
                runners[ctypes.c_int(n)] = ctypes.c_int(fd)
            entry = lsm.load(self.bpf, f"lsE{letter}_{target}", target)
            self._lsm_fds.append(entry)
            self._lsm_fds.append(lsm.attach(entry))
        except OSError as e:
            where = f"{hook.path}.hook: {hook.name!r}" if hook.kind == HOOK_LSM else \
                f"{hook.path}: the Override of {hook.name!r} on LSM hook {target!r}"
            raise ProgramError(f"{where}: {e.strerror} "
                               f"(is bpf_lsm_{target} a BPF LSM hook of this kernel?)") from e

    def _start_following(self) -> None:
        """followChildren: the exec/fork/exit bookkeeping first, then the
        running processes, so that none falls between the two."""
        from bcc import BPF
        sections = self.bpf["follow_sections"]
        for i, (slot, _) in enumerate(self._follow):
            conf = sections.Leaf()
            conf.slot = slot
            sections[ctypes.c_int(i)] = conf
        self.bpf["follow_count"][ctypes.c_int(0)] = ctypes.c_uint32(len(self._follow))
        match = self.bpf.load_func("follow_match", BPF.RAW_TRACEPOINT)
        self.bpf["follow_stages"][ctypes.c_int(0)] = ctypes.c_int(match.fd)
        for tp in ("exec", "fork", "exit"):
            self.bpf.attach_raw_tracepoint(tp=f"sched_process_{tp}", fn_name=f"follow_{tp}")
        followed = self.bpf["followed"]
        for tgid, bits in follow.seed([listed for _, listed in self._follow], self.procfs).items():
            key = ctypes.c_uint32(tgid)
            old = followed.get(key)
            followed[key] = ctypes.c_uint64(bits | (old.value if old is not None else 0))

    def _load_fentry(self, g: int, slots: list[int]) -> None:
        """fentry group g: its stages into its own program array (loaded as programs
        of the group's first function), then each hook's entry attached."""
        kind, function, _ = self.plans[slots[0]].attach[0]
        at_exit = kind == "fexit"
        slot = slots[0]
        try:
            runners = self.bpf[f"fentry_runners{g}"]
            for n, stage in enumerate(LSM_STAGE_PREFIX):
                fd = fentry.load(self.bpf, f"fe{stage}{g}", function, at_exit)
                self._fentry_fds.append(fd)
                runners[ctypes.c_int(n)] = ctypes.c_int(fd)
            for slot in slots:
                _, function, _ = self.plans[slot].attach[0]
                entry = fentry.load(self.bpf, f"fhook{slot}_{'exit' if at_exit else 'enter'}", function, at_exit)
                self._fentry_fds.append(entry)
                self._fentry_fds.append(fentry.attach(entry))
        except OSError as e:
            hook = self.policy.hooks[slot]
            raise ProgramError(f"{hook.path}: {kind} {function}: {e.strerror}") from e

    def set_enabled(self, enabled: bool) -> None:
        self.bpf["settings"][ctypes.c_int(0)] = ctypes.c_uint32(self.conf + 1 if enabled else 0)
        self.enabled = enabled

    def set_scope(self, cgroup_ids: set[int] | None) -> None:
        """Restrict the policy to processes of these cgroups (None: every
        process).  New ids go in before stale ones go out, so a container that
        stays in scope is never left out in between."""
        table = self.bpf["scope_cgroups"]
        wanted = cgroup_ids or set()
        old = {k.value for k in table.keys()}
        for cgid in wanted - old:
            table[ctypes.c_uint64(cgid)] = ctypes.c_uint8(1)
        self.bpf["settings"][ctypes.c_int(2)] = ctypes.c_uint32(0 if cgroup_ids is None else 1)
        for cgid in old - wanted:
            del table[ctypes.c_uint64(cgid)]

    def _configure_hook(self, slot: int, hook: Hook, plan: Plan) -> None:
        """Hook configuration `slot` (the hook's slot + NHOOKS * configuration)."""
        conf = self.bpf["hooks"].Leaf()
        kprobe_ctx = plan.backend in KPROBE_CTX_BACKENDS
        has_exit = any(phase == EXIT for _, _, phase in plan.attach)
        has_enter = any(phase == ENTER for _, _, phase in plan.attach)
        conf.flags = (HOOKF_KPROBE if kprobe_ctx else 0) | (HOOKF_SYSCALL_WRAPPER if plan.syscall_wrapper else 0)
        if has_exit and has_enter:
            conf.flags |= HOOKF_AT_EXIT
        conf.mode = plan.mode
        # the gate is checked at entry, or at the exit of a hook attached there alone (fexit)
        gate = self._fd_gate(hook, plan) if has_enter or plan.backend == hooks_mod.BACKEND_FENTRY else None
        if gate is not None:
            conf.flags |= HOOKF_FD_GATE
            conf.fd_src = gate
        conf.nargs = len(hook.args)
        conf.nselectors = len(hook.selectors)
        positions = self._positions(hook)
        for j, arg in enumerate(hook.args):
            a = conf.args[j]
            a.type = self._arg_class(hook, plan, arg, j)
            a.src = j if hook.kind == HOOK_TRACEPOINT else arg.index
            if plan.backend == hooks_mod.BACKEND_LSM_OVERRIDE:   # the one argument its LSM hooks supply
                a.type, a.src = ARG_CLASS[plan.override_class], 0
            a.size_src = arg.size_arg_index
            a.flags = ARGF_RETURN_COPY if arg.return_copy else 0
        if hook.return_arg is not None:
            conf.args[POS_RET].type = ARG_CLASS.get(hook.return_arg.type, 2)
        gate = prefix_gate(hook)
        if gate is not None:
            conf.flags |= HOOKF_PREFIX_GATE
            conf.gate_pos, values = gate
            conf.gate_len = max(len(v.encode()) for v in values)
            self._string_values(PREFIX_GATE_SLOT + slot, "Prefix", values)
        self._configure_sources(conf, hook, plan)
        self.bpf["hooks"][ctypes.c_int(slot)] = conf
        for k, sel in enumerate(hook.selectors):
            self._configure_selector(slot, k, hook, sel, positions)

    def _arg_class(self, hook: Hook, plan: Plan, arg, position: int) -> int:
        if arg.type != "auto" or hook.kind != HOOK_TRACEPOINT:
            return ARG_CLASS[arg.type]
        # auto on a tracepoint: from the field's declaration
        field = tracepoint_fields(self.tracefs, plan.attach[0][1])[arg.index]
        if "char *" in field.type or "char*" in field.type:
            return ARG_CLASS["string"]
        size = {1: "8", 2: "16", 4: "32", 8: "64"}.get(field.size, "64")
        return ARG_CLASS[("sint" if field.signed else "uint") + size] if size != "64" else (
            ARG_CLASS["int64"] if field.signed else ARG_CLASS["uint64"])

    def _configure_sources(self, conf, hook: Hook, plan: Plan) -> None:
        """Where raw arguments and the return value come from in a tracepoint's ctx."""
        def put(i: int, f: Field) -> None:
            conf.tp_off[i], conf.tp_size[i], conf.tp_signed[i] = f.offset, min(f.size, 8), int(f.signed)

        points = {phase: target for kind, target, phase in plan.attach if kind == "tracepoint"}
        if plan.backend == hooks_mod.BACKEND_FENTRY:
            # the program's context: a u64 slot per argument, then (fexit) the return value
            for i, (size, signed) in enumerate(plan.proto.params[:6]):
                conf.tp_off[i], conf.tp_size[i], conf.tp_signed[i] = 8 * i, size, int(signed)
            size, signed = plan.proto.ret
            conf.ret_off, conf.ret_size, conf.ret_signed = 8 * len(plan.proto.params), size, int(signed)
        elif plan.backend == hooks_mod.BACKEND_TRACEPOINT:
            fields = tracepoint_fields(self.tracefs, points[ENTER])
            for j, arg in enumerate(hook.args):
                if arg.index >= len(fields):
                    raise ProgramError(f"{hook.path}.args[{j}].index: tracepoint {hook.name} has "
                                       f"{len(fields)} fields, no index {arg.index}")
                put(j, fields[arg.index])
        elif plan.backend == hooks_mod.BACKEND_SYSCALL_TP:
            fields = _syscall_arg_fields(self.tracefs, points[ENTER])
            for i, f in enumerate(fields[:6]):
                put(i, f)
        elif plan.mode == hooks_mod.EMU_TCP_CONNECT:
            put(0, _syscall_arg_fields(self.tracefs, points[ENTER])[0])
        elif plan.mode == hooks_mod.EMU_TCP_CLOSE:
            fields = tracepoint_fields(self.tracefs, points[ENTER])
            for i, name in enumerate(("skaddr", "oldstate", "newstate", "protocol")):
                put(i, _field(fields, name))
        elif plan.mode == hooks_mod.EMU_TCP_SENDMSG:
            fields = tracepoint_fields(self.tracefs, points[ENTER])
            for i, name in enumerate(("sk", "protocol", "ret")):
                put(i, _field(fields, name))
        if EXIT in points:
            ret = _field(tracepoint_fields(self.tracefs, points[EXIT]), "ret")
            conf.ret_off, conf.ret_size, conf.ret_signed = ret.offset, min(ret.size, 8), int(ret.signed)

    def _fd_gate(self, hook: Hook, plan: Plan) -> int | None:
        """The raw argument that must be a followed fd for the hook to do
        anything, checked first thing at entry: an `fd` argument (an fd that
        is not followed drops the event, as in Tetragon), or the argFd of the
        UnfollowFD every selector starts with (unfollowing an fd that is not
        followed fails the selector: no event, no other action)."""
        if plan.mode != hooks_mod.EMU_NONE:
            return None   # the raw arguments are not the function's

        def source(position: int) -> int:
            return position if hook.kind == HOOK_TRACEPOINT else hook.args[position].index

        for j, arg in enumerate(hook.args):
            if arg.type == "fd":
                return source(j)
        firsts = [(sel.get("matchActions") or [{}])[0] for sel in hook.selectors]
        fds = {a.get("argFd", 0) for a in firsts}
        positions = self._positions(hook)
        if firsts and all(a.get("action") == "UnfollowFD" for a in firsts) and len(fds) == 1 \
                and next(iter(fds)) in positions:
            return source(positions[next(iter(fds))])
        return None

    @staticmethod
    def _positions(hook: Hook) -> dict[int, int]:
        """A selector's argument index -> the position the BPF side knows it by."""
        if hook.kind == HOOK_TRACEPOINT:
            return {j: j for j in range(len(hook.args))}
        return {a.index: j for j, a in enumerate(hook.args)}

    def _arg_type_at(self, hook: Hook, pos: int) -> str:
        if pos == POS_RET:
            return hook.return_arg.type if hook.return_arg else "auto"
        return hook.args[pos].type

    def _configure_selector(self, slot: int, k: int, hook: Hook, sel: dict, positions) -> None:
        idx = slot * MAX_SELECTORS + k
        conf = self.bpf["selectors"].Leaf()
        matches = [(positions[m.get("index", 0)], m) for m in sel.get("matchArgs") or ()]
        matches += [(POS_RET, m) for m in sel.get("matchReturnArgs") or ()]
        conf.nmatch = len(matches)
        for m, (pos, match) in enumerate(matches):
            self._configure_match(conf.match[m], idx * MATCH_SLOTS + m, pos, match, self._arg_type_at(hook, pos))
        pids = sel.get("matchPIDs") or []
        conf.npids = len(pids)
        for i, p in enumerate(pids):
            c = conf.pids[i]
            c.op, c.follow_forks, c.ns_pid, c.present = OPS[p["operator"]], int(p.get("followForks", False)), \
                int(p.get("isNamespacePID", False)), 1
            for pid in p.get("values") or ():
                key = self.bpf["pid_set"].Key(idx * PID_SLOTS + i, int(pid))
                self.bpf["pid_set"][key] = ctypes.c_uint8(1)
        for key, attr, m in (("matchBinaries", "bin", 6), ("matchParentBinaries", "pbin", 7)):
            entries = sel.get(key) or []
            if entries:
                b = entries[0]
                setattr(conf, f"{attr}_op", OPS[b["operator"]])
                self._string_values(idx * MATCH_SLOTS + m, b["operator"], b.get("values") or ())
                if b.get("followChildren"):
                    self._follow.append((idx * MATCH_SLOTS + m, frozenset(b.get("values") or ())))
                    setattr(conf, f"{attr}_follow", len(self._follow))   # its bit + 1
        namespaces = sel.get("matchNamespaces") or []
        conf.nns = len(namespaces)
        for i, ns in enumerate(namespaces):
            c = conf.ns[i]
            c.ns = NAMESPACE_INDEX[ns["namespace"]]
            c.op = OPS[ns["operator"]]
            values = ns.get("values") or []
            c.nvalues = len(values)
            for v, val in enumerate(values):
                c.values[v] = host_ns(ns["namespace"], self.procfs) if val == "host_ns" else int(val)
        caps = sel.get("matchCapabilities") or []
        conf.ncaps = len(caps)
        for i, cap in enumerate(caps):
            c = conf.caps[i]
            c.set = CAP_SETS[cap.get("type", "Effective")]
            c.op = OPS[cap["operator"]]
            c.mask = cap_mask(cap.get("values") or ())
        actions = sel.get("matchActions") or []
        conf.nactions = len(actions)
        for i, act in enumerate(actions):
            c = conf.actions[i]
            c.action = ACTIONS[act["action"]]
            c.arg_fd = positions.get(act.get("argFd", 0), 0)
            c.arg_name = positions.get(act.get("argName", 0), 0)
            c.scope = {"thread": 0, "process": 1, "global": 2}[act.get("rateLimitScope", "thread")]
            if act["action"] == "Override":
                c.arg = -abs(int(act.get("argError", -1)))   # Tetragon writes argError: -1
            else:
                c.arg = 9 if act["action"] == "Sigkill" else int(act.get("argSig", 0))
            c.rate_ns = parse_rate_limit(act["rateLimit"]) if act.get("rateLimit") else 0
        self.bpf["selectors"][ctypes.c_int(idx)] = conf

    def _configure_match(self, c, slot: int, pos: int, match: dict, arg_type: str) -> None:
        op = match["operator"]
        c.pos, c.op = pos, OPS[op]
        values = [str(v) for v in match.get("values") or ()]
        cls = ARG_CLASS.get(arg_type, 2)
        c.is_signed = int(arg_type in SIGNED_TYPES)
        if cls in SOCK_CLASSES:
            if op in ("SAddr", "NotSAddr", "DAddr", "NotDAddr"):
                for v in values:
                    self._addr_value(slot, v)
                return
            table = FAMILIES if op == "Family" else PROTOCOLS if op == "Protocol" else {}
            ints = [table.get(v) if v in table else int(v, 0) for v in values]
        elif cls in STRING_CLASSES:
            self._string_values(slot, op, values)
            return
        elif op in ("InRange", "NotInRange"):
            c.nvalues = len(values)
            for i, v in enumerate(values):
                lo, hi = (int(x, 0) for x in v.split(":"))
                c.lo[i], c.hi[i] = lo & (2**64 - 1), hi & (2**64 - 1)
            return
        else:
            ints = [int(v, 0) for v in values]
        c.nvalues = len(ints)
        for i, v in enumerate(ints):
            c.lo[i] = v & (2**64 - 1)

    def _string_values(self, slot: int, op: str, values) -> None:
        for v in values:
            raw = v.encode()
            if op in ("Equal", "NotEqual", "In", "NotIn"):
                t = self.bpf["str_eq"]
                key = t.Key()
                key.slot = slot
                key.s = raw
                t[key] = ctypes.c_uint8(1)
            elif op in ("Prefix", "NotPrefix"):
                t = self.bpf["str_prefix"]
                key = t.Key()
                key.slot, key.prefixlen, key.s = slot, 32 + 8 * len(raw), raw
                t[key] = ctypes.c_uint8(1)
            else:
                t = self.bpf["str_postfix"]
                key = t.Key()
                key.slot, key.prefixlen, key.s = slot, 32 + 8 * len(raw), raw[::-1]
                t[key] = ctypes.c_uint8(1)

    def _addr_value(self, slot: int, value: str) -> None:
        net = ipaddress.ip_network(value, strict=False)
        t = self.bpf["addr_trie"]
        key = t.Key()
        key.slot = slot
        key.family = 6 if net.version == 6 else 4
        key.prefixlen = 32 + 8 + net.prefixlen
        for i, b in enumerate(net.network_address.packed):
            key.addr[i] = b
        t[key] = ctypes.c_uint8(1)

    # -- attaching ----------------------------------------------------------
    def _attach(self, slot: int, hook: Hook, plan: Plan) -> None:
        kprobe_ctx = plan.backend in KPROBE_CTX_BACKENDS
        for kind, target, phase in plan.attach:
            fn = f"{'khook' if kprobe_ctx else 'hook'}{slot}_{'enter' if phase == ENTER else 'exit'}"
            if kind == "tracepoint" and phase == ENTER and target.startswith("syscalls:sys_enter_") \
                    and _syscall_arg_fields(self.tracefs, target):
                fn = f"hook{slot}_sysenter"   # reads its first argument without a helper
            try:
                if kind == "tracepoint":
                    self.bpf.attach_tracepoint(tp=target, fn_name=fn)
                elif kind == "kprobe":
                    self.bpf.attach_kprobe(event=target, fn_name=fn)
                elif kind == "kretprobe":
                    self.bpf.attach_kretprobe(event=target, fn_name=fn)
                elif kind == "uprobe":
                    self.bpf.attach_uprobe(name=hook.binary, sym=hook.symbol, fn_name=fn)
                elif kind == "uretprobe":
                    self.bpf.attach_uretprobe(name=hook.binary, sym=hook.symbol, fn_name=fn)
            except Exception as e:
                raise ProgramError(f"{hook.kind} {hook.name!r}: cannot attach {kind} {target}: {e}") from e

    # -- events -------------------------------------------------------------
    def open(self, on_record) -> None:
        def _cb(_ctx, data, size):
            on_record(self, ctypes.string_at(data, size))
            self._budget -= 1
            # libbpf keeps consuming while records arrive; a negative return
            # ends this round (the record is consumed), so that a busy ring
            # cannot starve the daemon's loop and the other rings
            return 0 if self._budget > 0 else -1
        self._cb = _cb
        self.bpf["events"].open_ring_buffer(_cb)

    def fileno(self) -> int:
        return self.bpf["events"].map_fd

    def consume(self, budget: int = CONSUME_BUDGET) -> None:
        """Handle up to `budget` queued records (the epoll stays ready for the rest)."""
        self._budget = budget
        self.bpf.ring_buffer_consume()

    def lost(self) -> int:
        return sum(self.bpf["lost_records"][ctypes.c_int(0)])

    def close(self) -> None:
        for fd in self._lsm_fds + self._fentry_fds:   # closing the link detaches: nothing stays denied
            os.close(fd)
        self._lsm_fds, self._fentry_fds = [], []
        self.bpf.cleanup()
