"""Which parts of a TracingPolicy become cgroup BPF network rules.

A selector that would Override (or Sigkill) a connect, a send or a socket
creation is decided by bpf/enforce_cgroup.c before the call takes effect,
instead of by a signal after it (on a kernel without BPF LSM or override, a
SIGKILL from a connect hook arrives after the peer accepted).  Everything
such a selector says must be decidable there; anything else is an error
naming the selector field, never a rule that silently enforces less.

Hooks understood, by the call they name (Tetragon's names, with or without
the `__x64_`/`__arm64_` syscall prefix):
  tcp_connect, sys_connect, __sys_connect                  -> connect (TCP and UDP)
  sys_sendto, udp_sendmsg, __sys_sendto                    -> sendmsg with a destination
  sys_socket, __sys_socket, security_socket_create         -> socket creation
"""

from __future__ import annotations

import socket
import dataclasses
from dataclasses import dataclass

from ..policy.program import NAMESPACE_INDEX, host_ns
from .sock import (ACTION_DENY, ACTION_KILL, ACTION_MONITOR, HOOK_CONNECT, HOOK_SENDMSG, HOOK_SOCK_CREATE,
                   MAX_ADDRS, MAX_PORTS, SockRule)

# hook call -> (cgroup hook, index of the argument that carries the address or socket)
NETWORK_CALLS = {
    "tcp_connect": (HOOK_CONNECT, 0),
    "sys_connect": (HOOK_CONNECT, 1),
    "__sys_connect": (HOOK_CONNECT, 1),
    "sys_sendto": (HOOK_SENDMSG, 4),
    "__sys_sendto": (HOOK_SENDMSG, 4),
    "udp_sendmsg": (HOOK_SENDMSG, 0),
    "sys_socket": (HOOK_SOCK_CREATE, None),
    "__sys_socket": (HOOK_SOCK_CREATE, None),
    "security_socket_create": (HOOK_SOCK_CREATE, None),
}
ENFORCING_ACTIONS = ("Override", "Sigkill")
# the selector fields a cgroup rule decides; any other is an error
SCOPE_SELECTORS = ("matchArgs", "matchActions", "matchBinaries", "matchPIDs", "matchNamespaces")
FAMILIES = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6, "AF_UNIX": socket.AF_UNIX}
PROTOCOLS = {"IPPROTO_TCP": socket.IPPROTO_TCP, "IPPROTO_UDP": socket.IPPROTO_UDP,
             "IPPROTO_ICMP": socket.IPPROTO_ICMP, "IPPROTO_RAW": socket.IPPROTO_RAW}
SOCK_TYPES = {"SOCK_STREAM": socket.SOCK_STREAM, "SOCK_DGRAM": socket.SOCK_DGRAM,
              "SOCK_RAW": socket.SOCK_RAW}


class EnforcementError(ValueError):
    """A selector that asks for prevention this kernel cannot give exactly."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class NetworkRule:
    hook_index: int
    selector_index: int
    call: str
    rule: SockRule
    kill: bool            # Sigkill: refuse, then kill the caller too
    errno: int            # Override's argError as a positive errno (the kernel returns EPERM)


def call_name(name: str) -> str:
    for prefix in ("__x64_", "__arm64_", "__ia32_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def is_network_call(name: str) -> bool:
    return call_name(name) in NETWORK_CALLS


def enforcing_selectors(hook) -> list[int]:
    return [i for i, sel in enumerate(hook.selectors)
            if any(a.get("action") in ENFORCING_ACTIONS for a in sel.get("matchActions") or ())]


def network_rules(policy, monitor: bool = False) -> list[NetworkRule]:
    """The cgroup rules of `policy`'s enforcing selectors on network calls."""
    out = []
    for h, hook in enumerate(policy.hooks):
        if hook.kind != "kprobe" or not is_network_call(hook.name):
            continue
        for s in enforcing_selectors(hook):
            out.append(_rule(hook, h, s, monitor))
    return out


def _rule(hook, h: int, s: int, monitor: bool) -> NetworkRule:
    sel = hook.selectors[s]
    where = f"{hook.path}.selectors[{s}]"
    cgroup_hook, addr_index = NETWORK_CALLS[call_name(hook.name)]
    rule = SockRule(action=ACTION_MONITOR if monitor else ACTION_DENY, hooks=cgroup_hook,
                    label=f"{hook.name} selector {s}")
    for key in sel:
        if key not in SCOPE_SELECTORS:
            raise EnforcementError(f"{where}.{key}", "cannot be decided before the call by cgroup "
                                   "BPF (this kernel has no BPF LSM or override); remove it or the "
                                   "enforcing action")
    for m, match in enumerate(sel.get("matchArgs") or ()):
        _arg(rule, match, f"{where}.matchArgs[{m}]", cgroup_hook, addr_index, hook)
    if cgroup_hook == HOOK_SOCK_CREATE and not rule.families:
        # the kernel runs sock_create programs from inet_create/inet6_create only
        raise EnforcementError(f"{where}.matchArgs", "socket creation can be refused for AF_INET "
                               "and AF_INET6 only (cgroup BPF); name them with Equal on argument 0")
    for m, match in enumerate(sel.get("matchBinaries") or ()):
        _binaries(rule, match, f"{where}.matchBinaries[{m}]")
    for m, match in enumerate(sel.get("matchPIDs") or ()):
        _pids(rule, match, f"{where}.matchPIDs[{m}]")
    _namespaces(rule, sel.get("matchNamespaces") or (), f"{where}.matchNamespaces")
    kill, err = False, 1
    for a, act in enumerate(sel.get("matchActions") or ()):
        if act.get("action") == "Sigkill":
            kill = True
        elif act.get("action") == "Override":
            err = abs(int(act.get("argError", -1)))
    if kill and not monitor:
        rule.action = ACTION_KILL
    return NetworkRule(h, s, hook.name, rule, kill, err)


def _arg(rule: SockRule, match: dict, where: str, cgroup_hook: int, addr_index, hook) -> None:
    op = match.get("operator", "")
    values = [str(v) for v in match.get("values") or ()]
    index = match.get("index", 0)
    if cgroup_hook == HOOK_SOCK_CREATE:
        # socket(family, type, protocol): Equal on the integer arguments
        if op != "Equal" or index not in (0, 1, 2):
            raise EnforcementError(f"{where}.operator", f"{op} on argument {index} of {hook.name} "
                                   "cannot be enforced; use Equal on family (0), type (1) or protocol (2)")
        names = (FAMILIES, SOCK_TYPES, PROTOCOLS)[index]
        target = (rule.families, rule.types, rule.protocols)[index]
        for v in values:
            target.add(names[v] if v in names else int(v, 0))
        if index == 0 and not rule.families <= {socket.AF_INET, socket.AF_INET6}:
            raise EnforcementError(f"{where}.values", "socket creation can be refused for AF_INET "
                                   "and AF_INET6 only (cgroup BPF runs for internet sockets)")
        return
    if index != addr_index:
        raise EnforcementError(f"{where}.index", f"argument {index} of {hook.name} is not the "
                               f"socket or address (argument {addr_index}); it cannot be enforced")
    arg_type = next((a.type for a in hook.args if a.index == index), "")
    if arg_type == "sockaddr":
        # Tetragon matches a sockaddr's address with SAddr/SPort: for connect and
        # sendto that address is the destination
        op = {"SAddr": "DAddr", "NotSAddr": "NotDAddr", "SPort": "DPort", "NotSPort": "NotDPort",
              "SPortPriv": "DPortPriv", "NotSPortPriv": "NotDPortPriv"}.get(op, op)
    if op in ("DAddr", "NotDAddr"):
        if rule.cidrs:
            raise EnforcementError(where, "DAddr and NotDAddr in one selector cannot be enforced together")
        if len(values) > MAX_ADDRS:
            raise EnforcementError(f"{where}.values", f"at most {MAX_ADDRS} addresses can be enforced")
        rule.cidrs = values
        rule.cidrs_negate = op == "NotDAddr"
    elif op in ("DPort", "NotDPort", "DPortPriv", "NotDPortPriv"):
        if rule.ports:
            raise EnforcementError(where, "only one port operator per selector can be enforced")
        ports = [(0, 1023)] if op.endswith("Priv") else [(int(v, 0), int(v, 0)) for v in values]
        if len(ports) > MAX_PORTS:
            raise EnforcementError(f"{where}.values", f"at most {MAX_PORTS} ports can be enforced")
        rule.ports = ports
        rule.ports_negate = op.startswith("Not")
    elif op == "Family":
        rule.families |= {FAMILIES[v] if v in FAMILIES else int(v, 0) for v in values}
    elif op == "Protocol":
        rule.protocols |= {PROTOCOLS[v] if v in PROTOCOLS else int(v, 0) for v in values}
    else:
        raise EnforcementError(f"{where}.operator", f"{op} cannot be decided before the call "
                               "(the source address and port do not exist yet at connect time)"
                               if op in ("SAddr", "NotSAddr", "SPort", "NotSPort", "SPortPriv")
                               else f"{op} cannot be enforced on a network call")


def _binaries(rule: SockRule, match: dict, where: str) -> None:
    op = match.get("operator", "")
    if op not in ("In", "NotIn") or match.get("followChildren"):
        raise EnforcementError(f"{where}.operator", f"{op} cannot be enforced before the call "
                               "(exact In and NotIn can)")
    if rule.binaries and (op == "NotIn") != rule.binaries_negate:
        raise EnforcementError(where, "In and NotIn binaries in one selector cannot be enforced together")
    rule.binaries |= set(match.get("values") or ())
    rule.binaries_negate = op == "NotIn"


def _pids(rule: SockRule, match: dict, where: str) -> None:
    if match.get("operator") != "In" or match.get("isNamespacePID") or match.get("followForks"):
        raise EnforcementError(f"{where}.operator", "only matchPIDs In with host pids can be enforced "
                               "before the call")
    rule.pids |= {int(v) for v in match.get("values") or ()}


def _namespaces(rule, entries, where: str) -> None:
    """matchNamespaces, decided in the kernel at each call from the caller's
    namespaces (bpf/ns.h); host_ns is PID 1's namespace."""
    seen = set()
    for m, entry in enumerate(entries):
        kind = NAMESPACE_INDEX[entry["namespace"]]
        if kind in seen:
            raise EnforcementError(f"{where}[{m}].namespace", "one entry per namespace kind can be enforced")
        seen.add(kind)
        inums = [host_ns(entry["namespace"]) if v == "host_ns" else int(v) for v in entry.get("values") or ()]
        rule.namespaces.append((kind, entry["operator"] == "NotIn", inums))


def tracing_part(policy, also=frozenset()):
    """`policy` without its enforcing network selectors and the (hook index,
    selector index) pairs in `also` (device rules), which the cgroup programs
    both decide and report; a hook left with none is dropped (a hook without
    selectors would match everything).  Returns the policy itself when nothing
    is enforced by cgroup BPF."""
    hooks, changed = [], False
    for h, hook in enumerate(policy.hooks):
        enforcing = set(enforcing_selectors(hook)) if hook.kind == "kprobe" and is_network_call(hook.name) else set()
        enforcing |= {s for hh, s in also if hh == h}
        if not enforcing:
            hooks.append(hook)
            continue
        changed = True
        rest = tuple(sel for i, sel in enumerate(hook.selectors) if i not in enforcing)
        if rest:
            hooks.append(dataclasses.replace(hook, selectors=rest))
    return dataclasses.replace(policy, hooks=hooks) if changed else policy


def unenforceable_overrides(policy, features, devices=frozenset(), not_devices=None) -> list[str]:
    """Reasons why Override on hooks other than network calls cannot be honoured
    here.  An lsmhook returns the error from its BPF LSM program (the hook is
    refused anyway on a kernel without BPF LSM); elsewhere the backend rule
    (tetrad/backends.py choose_override) names what would make the call fail.
    `devices`: (hook index, selector index) pairs that are device rules;
    `not_devices`: for other selectors on open hooks, why they are not."""
    from .. import backends
    reasons = []
    for h, hook in enumerate(policy.hooks):
        if hook.kind == "lsm" or (hook.kind == "kprobe" and is_network_call(hook.name)):
            continue
        for s, sel in enumerate(hook.selectors):
            if (h, s) in devices:
                continue
            if any(a.get("action") == "Override" for a in sel.get("matchActions") or ()):
                where = f"{hook.path}.selectors[{s}].matchActions"
                why = (not_devices or {}).get((h, s))
                choice = (backends.choose_override(features, hook.name, syscall=hook.syscall,
                                                   families=backends.ENGINE_OVERRIDE_FAMILIES)
                          if hook.kind == "kprobe" else None)
                if choice is None or choice.backend is None:
                    reasons.append(f"{where}: Override on {hook.name!r} cannot be honoured here: " +
                                   (choice.reason if choice else f"a {hook.kind} hook cannot make a call fail") +
                                   (f"; cgroup BPF refuses only device opens, and {why}" if why else ""))
    return reasons
