"""What tetrad accepts in a TracingPolicy beyond Tetragon's schema: Tetragon's
own limits (they are errors here, never a selector that silently never
matches) and the features tetrad does not implement (rejected with a reason
that names them).  Every check returns (field path, reason) pairs."""

from __future__ import annotations

import ipaddress
import re

from . import scope

# Tetragon's limits (pkg/selectors, bpf/process/types/basic.h).
MAX_SELECTORS = 5            # selectors per hook
MAX_MATCH_ARGS = 5           # matchArgs (+ matchData) per selector
MAX_MATCH_VALUES = 4         # values of a numeric operator
MAX_ACTIONS = 3              # matchActions per selector
MAX_NAMESPACE_VALUES = 4     # values per matchNamespaces entry
MAX_NAMESPACE_FILTERS = 10
MAX_ARGS = 5                 # traced arguments per hook
MAX_ARG_INDEX = 5            # kprobe/syscall arguments are 0..5
EQUAL_STRING_MAX_LEN = 255    # tetrad: Equal/In strings are hash keys of 256 bytes
MAX_HOOKS = 16                # tetrad: hooks per policy (one BPF object each)
MAX_LSM_HOOKS = 4             # tetrad: lsmhooks per policy (each has its own BPF LSM programs)
MAX_BINARY_ENTRIES = 1        # tetrad: matchBinaries / matchParentBinaries entries per selector
MAX_FOLLOW_CHILDREN = 64      # Tetragon: 64 followChildren sections (tetrad: per policy, both kinds)
MAX_PID_FILTERS = 2           # tetrad: matchPIDs entries per selector
MAX_CAP_FILTERS = 2           # tetrad: matchCapabilities entries per selector
MAX_RETURN_MATCHES = 1        # tetrad: matchReturnArgs per selector
PREFIX_MAX_LEN = 252         # Tetragon: 256; tetrad's LPM keys also hold a 4-byte selector slot
POSTFIX_MAX_LEN = 127
LSM_HOOK_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")   # the part after bpf_lsm_ in the kernel

# Argument types tetrad reads, by hook kind.
ARG_TYPES = {"int", "sint8", "int8", "uint8", "sint16", "int16", "uint16", "uint32", "sint32",
             "int32", "ulong", "uint64", "size_t", "long", "sint64", "int64", "char_buf",
             "string", "fd", "file", "path", "sock", "sockaddr", "auto", "nop",
             "filename", "syscall64"}
INT_TYPES = {"int", "sint8", "int8", "uint8", "sint16", "int16", "uint16", "uint32", "sint32",
             "int32", "ulong", "uint64", "size_t", "long", "sint64", "int64", "fd", "syscall64"}
STRING_TYPES = {"string", "char_buf", "file", "path", "fd", "filename"}
SOCK_TYPES = {"sock", "sockaddr"}

STRING_OPS = {"Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix"}
INT_OPS = {"Equal", "NotEqual", "GreaterThan", "GT", "LessThan", "LT", "Mask", "InRange",
           "NotInRange"}
SOCK_OPS = {"SPort", "NotSPort", "SPortPriv", "NotSPortPriv", "NotSportPriv", "DPort", "NotDPort", "DPortPriv",
            "NotDPortPriv", "SAddr", "NotSAddr", "DAddr", "NotDAddr", "Protocol", "Family"}
SOCKADDR_OPS = {"SPort", "NotSPort", "SPortPriv", "NotSPortPriv", "NotSportPriv", "SAddr", "NotSAddr", "Family"}
NO_VALUE_OPS = {"SPortPriv", "NotSPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv"}
BINARY_OPS = {"In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix"}
ACTIONS = {"Post", "NoPost", "FollowFD", "UnfollowFD", "CopyFD", "Signal", "Sigkill"}
SELECTOR_KEYS = {"matchPIDs", "matchArgs", "matchReturnArgs", "matchBinaries",
                 "matchParentBinaries", "matchNamespaces", "matchCapabilities", "matchActions"}
NAMESPACES = {"Uts", "Ipc", "Mnt", "Pid", "PidForChildren", "Net", "Time", "TimeForChildren",
              "Cgroup", "User"}

# Top-level spec sections tetrad does not implement, with why.
UNSUPPORTED_SECTIONS = {
    "usdts": "USDT probes (usdts) are not supported by tetrad yet",
    "fentries": "fentry hooks (fentries) are not supported by tetrad yet",
    "enforcers": "enforcers are not supported by tetrad yet",
    "lists": "lists (spec.lists) are not supported by tetrad yet",
    "loader": "the loader sensor (spec.loader) is not supported by tetrad yet",
    "hostSelector": "hostSelector is not supported by tetrad yet",
}
UNSUPPORTED_SELECTOR_KEYS = {
    "matchNamespaceChanges": "matchNamespaceChanges is not supported by tetrad yet",
    "matchCapabilityChanges": "matchCapabilityChanges is not supported by tetrad yet",
    "matchReturnActions": "matchReturnActions is not supported by tetrad yet",
    "matchData": "matchData is not supported by tetrad yet",
}


def parse_rate_limit(text: str) -> int:
    """Tetragon's rateLimit ("10", "10s", "5m", "1h") -> nanoseconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = str(text).strip()
    num, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    if not num.isdigit() or int(num) == 0:
        raise ValueError(f"rateLimit {text!r} is invalid (a positive number with s, m or h)")
    return int(num) * units[unit] * 1_000_000_000


def check_spec(spec: dict) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for key, why in UNSUPPORTED_SECTIONS.items():
        if spec.get(key) not in (None, [], {}, False):
            errors.append((f"spec.{key}", why))
    if spec.get("podSelector") is not None:
        errors += scope.check_selector(spec["podSelector"], "spec.podSelector")
    if spec.get("containerSelector") is not None:
        errors += scope.check_selector(spec["containerSelector"], "spec.containerSelector",
                                       scope.CONTAINER_FIELDS)
    if not any(spec.get(k) for k in ("kprobes", "tracepoints", "uprobes", "lsmhooks")):
        errors.append(("spec", "no kprobes, tracepoints, uprobes or lsmhooks: the policy hooks nothing"))
    hooks = (len(spec.get("kprobes") or ()) + len(spec.get("tracepoints") or ())
             + len(spec.get("lsmhooks") or ())
             + sum(len(u.get("symbols") or ()) for u in spec.get("uprobes") or ()))
    if hooks > MAX_HOOKS:
        errors.append(("spec", f"{hooks} hooks; tetrad loads at most {MAX_HOOKS} per policy (split it)"))
    follow = follow_children_sections(spec)
    if len(follow) > MAX_FOLLOW_CHILDREN:
        errors.append((follow[MAX_FOLLOW_CHILDREN], f"{len(follow)} matchBinaries/matchParentBinaries "
                       f"with followChildren; tetrad supports at most {MAX_FOLLOW_CHILDREN} per policy"))
    for i, k in enumerate(spec.get("kprobes") or ()):
        errors += _check_hook(k, f"spec.kprobes[{i}]", "kprobe")
    for i, t in enumerate(spec.get("tracepoints") or ()):
        if t.get("raw"):
            errors.append((f"spec.tracepoints[{i}].raw", "raw tracepoints are not supported by tetrad yet"))
        errors += _check_hook(t, f"spec.tracepoints[{i}]", "tracepoint")
    if len(spec.get("lsmhooks") or ()) > MAX_LSM_HOOKS:
        errors.append(("spec.lsmhooks", f"{len(spec['lsmhooks'])} lsmhooks; tetrad loads at most "
                                        f"{MAX_LSM_HOOKS} per policy (split it)"))
    seen_lsm: dict[str, int] = {}
    for i, h in enumerate(spec.get("lsmhooks") or ()):
        name = h.get("hook", "")
        if not LSM_HOOK_NAME.fullmatch(name):
            errors.append((f"spec.lsmhooks[{i}].hook", f"{name!r} is not an LSM hook name (as in file_open)"))
        elif name in seen_lsm:
            # one BPF LSM program per hook and policy: its name is the hook's
            errors.append((f"spec.lsmhooks[{i}].hook", f"{name!r} is already hooked by "
                                                       f"spec.lsmhooks[{seen_lsm[name]}]; merge their selectors"))
        seen_lsm.setdefault(name, i)
        errors += _check_hook(h, f"spec.lsmhooks[{i}]", "lsm")
    for i, u in enumerate(spec.get("uprobes") or ()):
        for key in ("offsets", "addrs", "refCtrOffsets"):
            if u.get(key):
                errors.append((f"spec.uprobes[{i}].{key}", f"uprobe {key} are not supported by tetrad yet; use symbols"))
        if not u.get("symbols") and not (u.get("offsets") or u.get("addrs")):
            errors.append((f"spec.uprobes[{i}].symbols", "required field missing"))
        errors += _check_hook(u, f"spec.uprobes[{i}]", "uprobe")
    return errors


def follow_children_sections(spec: dict) -> list[str]:
    """Field paths of the matchBinaries/matchParentBinaries entries with
    followChildren, in the order their bits are given in the kernel."""
    out = []
    for kind in ("kprobes", "tracepoints", "uprobes", "lsmhooks"):
        for i, h in enumerate(spec.get(kind) or ()):
            for k, sel in enumerate(h.get("selectors") or ()):
                for key in ("matchBinaries", "matchParentBinaries"):
                    for m, b in enumerate(sel.get(key) or ()):
                        if b.get("followChildren"):
                            out.append(f"spec.{kind}[{i}].selectors[{k}].{key}[{m}].followChildren")
    return out


def _check_arg(a: dict, path: str, kind: str = "kprobe") -> list[tuple[str, str]]:
    errors = []
    ty = a.get("type", "auto")
    if ty not in ARG_TYPES:
        errors.append((f"{path}.type", f"argument type {ty!r} is not supported by tetrad yet"))
    if kind != "tracepoint" and a.get("index", 0) > MAX_ARG_INDEX:   # a tracepoint's: a format field
        errors.append((f"{path}.index", f"index {a['index']} is over the maximum {MAX_ARG_INDEX}"))
    for key in ("resolve", "btfType", "source"):
        if a.get(key):
            errors.append((f"{path}.{key}", f"argument {key} is not supported by tetrad yet"))
    return errors


def _check_hook(h: dict, path: str, kind: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    args = h.get("args") or []
    if len(args) > MAX_ARGS:
        errors.append((f"{path}.args", f"at most {MAX_ARGS} arguments per hook ({len(args)} given)"))
    types = {}
    for j, a in enumerate(args):
        errors += _check_arg(a, f"{path}.args[{j}]", kind)
        # matchArgs name a kprobe's argument by its index, a tracepoint's by its place in args
        types[j if kind == "tracepoint" else a.get("index")] = a.get("type", "auto")
        size_idx = a.get("sizeArgIndex", 0)
        if size_idx and not any(b.get("index") == size_idx - 1 for b in args):
            errors.append((f"{path}.args[{j}].sizeArgIndex",
                           f"sizeArgIndex {size_idx} names argument index {size_idx - 1}, which is not traced"))
    if h.get("return") and "returnArg" not in h:
        errors.append((f"{path}.returnArg", "ReturnArg not specified with Return=true"))
    if h.get("returnArg"):
        errors += _check_arg(h["returnArg"], f"{path}.returnArg")
    if h.get("returnArgAction"):
        errors.append((f"{path}.returnArgAction", "returnArgAction is not supported by tetrad yet"))
    selectors = h.get("selectors") or []
    if len(selectors) > MAX_SELECTORS:
        errors.append((f"{path}.selectors",
                       f"no more than {MAX_SELECTORS} selectors supported ({len(selectors)} provided)"))
    ret_type = (h.get("returnArg") or {}).get("type", "auto") if h.get("return") else None
    for s, sel in enumerate(selectors):
        errors += _check_selector(sel, f"{path}.selectors[{s}]", types, ret_type, kind)
    return errors


def _check_selector(sel: dict, path: str, types: dict, ret_type, kind: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for key, why in UNSUPPORTED_SELECTOR_KEYS.items():
        if sel.get(key):
            errors.append((f"{path}.{key}", why))
    args = sel.get("matchArgs") or []
    if len(args) > MAX_MATCH_ARGS:
        errors.append((f"{path}.matchArgs", f"supports up to {MAX_MATCH_ARGS} filters ({len(args)} provided)"))
    for m, match in enumerate(args):
        p = f"{path}.matchArgs[{m}]"
        if "args" in match:
            errors.append((f"{p}.args", "matchArgs with `args` lists is not supported by tetrad yet; use index"))
            continue
        idx = match.get("index", 0)
        if idx not in types:
            errors.append((f"{p}.index", f"argument index {idx} is not among the hook's args"))
            continue
        errors += _check_match(match, p, types[idx])
    limits = (("matchReturnArgs", MAX_RETURN_MATCHES), ("matchPIDs", MAX_PID_FILTERS),
              ("matchCapabilities", MAX_CAP_FILTERS), ("matchBinaries", MAX_BINARY_ENTRIES),
              ("matchParentBinaries", MAX_BINARY_ENTRIES))
    for key, limit in limits:
        if len(sel.get(key) or []) > limit:
            errors.append((f"{path}.{key}", f"tetrad supports up to {limit} {key} entr"
                                            f"{'y' if limit == 1 else 'ies'} per selector "
                                            f"({len(sel[key])} given)"))
    for m, match in enumerate(sel.get("matchReturnArgs") or []):
        p = f"{path}.matchReturnArgs[{m}]"
        if ret_type is None:
            errors.append((p, "matchReturnArgs needs `return: true` with a returnArg"))
            continue
        errors += _check_match(match, p, ret_type)
    for m, pids in enumerate(sel.get("matchPIDs") or []):
        if pids.get("operator") not in ("In", "NotIn"):
            errors.append((f"{path}.matchPIDs[{m}].operator", f"unknown operator {pids.get('operator')!r} (In, NotIn)"))
    for key in ("matchBinaries", "matchParentBinaries"):
        for m, b in enumerate(sel.get(key) or []):
            op = b.get("operator")
            if b.get("followChildren") and op not in ("In", "NotIn"):
                errors.append((f"{path}.{key}[{m}].followChildren",
                               f"followChildren works with the operators In and NotIn, not {op!r}"))
            if op not in BINARY_OPS:
                errors.append((f"{path}.{key}[{m}].operator",
                               f"operator {op!r} is not supported by tetrad yet ({', '.join(sorted(BINARY_OPS))})"))
            for v, val in enumerate(b.get("values") or []):
                if op in ("Prefix", "NotPrefix") and len(val) > PREFIX_MAX_LEN:
                    errors.append((f"{path}.{key}[{m}].values[{v}]",
                                   f"longer than {PREFIX_MAX_LEN} characters"))
                if op in ("Postfix", "NotPostfix") and len(val) > POSTFIX_MAX_LEN:
                    errors.append((f"{path}.{key}[{m}].values[{v}]",
                                   f"longer than {POSTFIX_MAX_LEN} characters"))
                if op in ("In", "NotIn") and len(val.encode()) > EQUAL_STRING_MAX_LEN:
                    errors.append((f"{path}.{key}[{m}].values[{v}]",
                                   f"longer than {EQUAL_STRING_MAX_LEN} characters"))
    namespaces = sel.get("matchNamespaces") or []
    if len(namespaces) > MAX_NAMESPACE_FILTERS:
        errors.append((f"{path}.matchNamespaces",
                       f"supports up to {MAX_NAMESPACE_FILTERS} filters ({len(namespaces)} provided)"))
    for m, ns in enumerate(namespaces):
        p = f"{path}.matchNamespaces[{m}]"
        if ns.get("namespace") not in NAMESPACES:
            errors.append((f"{p}.namespace", f"unknown namespace {ns.get('namespace')!r}"))
        values = ns.get("values") or []
        if len(values) > MAX_NAMESPACE_VALUES:
            errors.append((f"{p}.values", f"supports up to {MAX_NAMESPACE_VALUES} values ({len(values)} provided)"))
        for v, val in enumerate(values):
            if val != "host_ns" and not str(val).isdigit():
                errors.append((f"{p}.values[{v}]", f'{val!r} is neither a namespace inode number nor "host_ns"'))
    for m, cap in enumerate(sel.get("matchCapabilities") or []):
        p = f"{path}.matchCapabilities[{m}]"
        if cap.get("isNamespaceCapability"):
            errors.append((f"{p}.isNamespaceCapability", "isNamespaceCapability is not supported by tetrad yet"))
    actions = sel.get("matchActions") or []
    if len(actions) > MAX_ACTIONS:
        errors.append((f"{path}.matchActions", f"only {MAX_ACTIONS} actions are supported per selector ({len(actions)} given)"))
    for a, act in enumerate(actions):
        errors += _check_action(act, f"{path}.matchActions[{a}]", types, kind)
    return errors


def _check_match(match: dict, path: str, arg_type: str) -> list[tuple[str, str]]:
    errors = []
    op = match.get("operator")
    values = [str(v) for v in match.get("values") or []]
    if arg_type in SOCK_TYPES:
        allowed = SOCKADDR_OPS if arg_type == "sockaddr" else SOCK_OPS
    elif arg_type in ("fd", "file", "path", "filename"):
        allowed = STRING_OPS
    elif arg_type in ("string", "char_buf"):
        allowed = STRING_OPS
    else:
        allowed = INT_OPS
    if op not in allowed:
        errors.append((f"{path}.operator",
                       f"operator {op} is not supported for a {arg_type} argument "
                       f"(supported: {', '.join(sorted(allowed))})"))
        return errors
    if not values and op not in NO_VALUE_OPS:
        errors.append((f"{path}.values", f"operator {op} needs values"))
    if allowed is INT_OPS:
        if len(values) > MAX_MATCH_VALUES:
            errors.append((f"{path}.values",
                           f"selector does not support more than {MAX_MATCH_VALUES} values ({len(values)} given)"))
        for v, val in enumerate(values):
            try:
                if op in ("InRange", "NotInRange"):
                    lo, hi = val.split(":")
                    if int(lo, 0) > int(hi, 0):
                        raise ValueError("min above max")
                else:
                    int(val, 0)
            except ValueError:
                form = "'min:max'" if op in ("InRange", "NotInRange") else "an integer"
                errors.append((f"{path}.values[{v}]", f"{val!r} is not {form}"))
    elif allowed is STRING_OPS:
        limit = {"Prefix": PREFIX_MAX_LEN, "NotPrefix": PREFIX_MAX_LEN,
                 "Postfix": POSTFIX_MAX_LEN, "NotPostfix": POSTFIX_MAX_LEN}.get(op, EQUAL_STRING_MAX_LEN)
        for v, val in enumerate(values):
            if len(val.encode()) > limit:
                errors.append((f"{path}.values[{v}]", f"string is longer than {limit} characters"))
    else:
        for v, val in enumerate(values):
            if not _sock_value_ok(op, val):
                errors.append((f"{path}.values[{v}]", f"{val!r} is not a valid {op} value"))
    return errors


_FAMILIES = {"AF_INET", "AF_INET6", "AF_UNIX"}
_PROTOCOLS = {"IPPROTO_TCP", "IPPROTO_UDP", "IPPROTO_ICMP", "IPPROTO_RAW"}


def _sock_value_ok(op: str, val: str) -> bool:
    try:
        if op in ("SAddr", "NotSAddr", "DAddr", "NotDAddr"):
            ipaddress.ip_network(val, strict=False)
        elif op in ("SPort", "NotSPort", "DPort", "NotDPort"):
            if not 0 <= int(val, 0) <= 65535:
                return False
        elif op == "Family":
            return val in _FAMILIES or val.isdigit()
        elif op == "Protocol":
            return val in _PROTOCOLS or val.isdigit()
        return True
    except ValueError:
        return False


def _check_action(act: dict, path: str, types: dict, kind: str) -> list[tuple[str, str]]:
    name = act.get("action")
    if name == "Override":
        # whether this kernel can honour it is decided with the hook (tetrad/enforce/)
        try:
            int(act.get("argError", -1))
        except (TypeError, ValueError):
            return [(f"{path}.argError", f"{act.get('argError')!r} is not an integer error number")]
        return []
    if name not in ACTIONS:
        return [(f"{path}.action", f"action {name} is not supported by tetrad yet")]
    errors = []
    if (act.get("rateLimit") or act.get("rateLimitScope")) and name != "Post":
        errors.append((f"{path}.rateLimit", f"rate limiting can only be applied to Post (was applied to {name})"))
    if act.get("rateLimit"):
        try:
            parse_rate_limit(act["rateLimit"])
        except ValueError as e:
            errors.append((f"{path}.rateLimit", str(e)))
    if act.get("rateLimitScope", "thread") not in ("thread", "process", "global"):
        errors.append((f"{path}.rateLimitScope", f"unknown rateLimitScope {act['rateLimitScope']!r}"))
    if name in ("FollowFD", "UnfollowFD", "CopyFD"):
        if kind == "uprobe":
            errors.append((f"{path}.action", f"{name} works on kprobes and tracepoints only"))
        for key in ("argFd", "argName") if name != "UnfollowFD" else ("argFd",):
            if act.get(key, 0) not in types:
                errors.append((f"{path}.{key}", f"{key} {act.get(key, 0)} is not among the hook's args"))
    if name == "Signal" and not act.get("argSig"):
        errors.append((f"{path}.argSig", "Signal needs argSig"))
    return errors
