"""Socket rules enforced by cgroup BPF (bpf/enforce_cgroup.c, -DENFORCE_SOCKETS).

`SockRule` is what a network policy compiles to: which hooks (socket
creation, connect, sendmsg), which families/protocols/socket types, which
destination CIDRs and ports (or all but them), for which processes, and
whether to refuse (EPERM) or only report.  `SockEnforcer` owns the BPF object:
programs attached by BPF links to the cgroup v2 root (so they cover every
process of the host and end with the daemon), rules in a BPF array (a changed
rule needs no recompilation), and the records of every refused or reported
call."""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field

from ..bpf_loader import compile_program
from . import links

log = logging.getLogger("tetrad.enforce.sock")

MAX_RULES = 16
MAX_ADDRS = 8
MAX_PORTS = 8
NS_KINDS = 10          # bpf/ns.h: namespace kinds, tetrad/policy/program.py NAMESPACE_INDEX
BINARY_KEY_LEN = 256

ACTION_DENY = 1
ACTION_MONITOR = 2
ACTION_KILL = 3        # deny, and SIGKILL the caller as its call returns (in the kernel)

HOOK_CONNECT = 1 << 0
HOOK_SENDMSG = 1 << 1
HOOK_SOCK_CREATE = 1 << 2
HOOK_NAMES = {HOOK_CONNECT: "connect", HOOK_SENDMSG: "sendmsg", HOOK_SOCK_CREATE: "socket"}

SCOPE_PROCESS = 1 << 0
SCOPE_CGROUP = 1 << 1
SCOPE_NOT_PROCESS = 1 << 2

RECORD_SOCK = 16


class _Cidr(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16), ("mask", ctypes.c_uint8 * 16),
                ("family", ctypes.c_uint32)]


class _Ports(ctypes.Structure):
    _fields_ = [("lo", ctypes.c_uint16), ("hi", ctypes.c_uint16)]


class _Rule(ctypes.Structure):
    _fields_ = [("action", ctypes.c_uint32), ("hooks", ctypes.c_uint32),
                ("families", ctypes.c_uint32), ("protocols", ctypes.c_uint32),
                ("types", ctypes.c_uint32), ("scope", ctypes.c_uint32),
                ("n_addrs", ctypes.c_uint32), ("addrs_negate", ctypes.c_uint32),
                ("n_ports", ctypes.c_uint32), ("ports_negate", ctypes.c_uint32),
                ("addrs", _Cidr * MAX_ADDRS), ("ports", _Ports * MAX_PORTS)]


class _Record(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint8), ("pad0", ctypes.c_uint8 * 3), ("size", ctypes.c_uint32),
                ("ktime", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("tid", ctypes.c_uint32),
                ("rule", ctypes.c_uint32), ("hook", ctypes.c_uint32), ("action", ctypes.c_uint32),
                ("family", ctypes.c_uint32), ("type_", ctypes.c_uint32),
                ("protocol", ctypes.c_uint32), ("dport", ctypes.c_uint16),
                ("pad1", ctypes.c_uint16), ("daddr", ctypes.c_uint8 * 16),
                ("cgroup_id", ctypes.c_uint64)]


assert ctypes.sizeof(_Rule) == 40 + 36 * MAX_ADDRS + 4 * MAX_PORTS and ctypes.sizeof(_Record) == 80


class RuleError(ValueError):
    pass


@dataclass
class SockRule:
    """One network rule.  Empty sets mean "any"."""
    action: int = ACTION_DENY
    hooks: int = HOOK_CONNECT | HOOK_SENDMSG
    families: set[int] = field(default_factory=set)      # socket.AF_INET, AF_INET6
    protocols: set[int] = field(default_factory=set)     # socket.IPPROTO_TCP, ...
    types: set[int] = field(default_factory=set)         # socket.SOCK_STREAM, ...
    cidrs: list[str] = field(default_factory=list)       # "10.0.0.0/8", "::1/128"
    cidrs_negate: bool = False
    ports: list[tuple[int, int]] = field(default_factory=list)
    ports_negate: bool = False
    binaries: set[str] = field(default_factory=set)      # exact exec paths (matchBinaries In)
    binaries_negate: bool = False                        # matchBinaries NotIn
    pids: set[int] = field(default_factory=set)
    cgroup_ids: set[int] | None = None                   # pods/containers; None = any
    namespaces: list = field(default_factory=list)       # matchNamespaces: [(kind, NotIn?, [inode, ...])]
    label: str = ""                                      # policy/hook, for events

    def to_struct(self) -> _Rule:
        r = _Rule(action=self.action, hooks=self.hooks)
        r.families = _bits(self.families)
        r.protocols = _bits(self.protocols)
        r.types = _bits(self.types)
        if len(self.cidrs) > MAX_ADDRS:
            raise RuleError(f"at most {MAX_ADDRS} addresses per rule, got {len(self.cidrs)}")
        if len(self.ports) > MAX_PORTS:
            raise RuleError(f"at most {MAX_PORTS} port ranges per rule, got {len(self.ports)}")
        for i, text in enumerate(self.cidrs):
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError as e:
                raise RuleError(f"bad address {text!r}: {e}") from None
            packed = net.network_address.packed
            r.addrs[i].addr[:len(packed)] = list(packed)
            r.addrs[i].mask[:len(packed)] = list(net.netmask.packed)
            r.addrs[i].family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        r.n_addrs = len(self.cidrs)
        r.addrs_negate = int(self.cidrs_negate)
        for i, (lo, hi) in enumerate(self.ports):
            if not 0 <= lo <= hi <= 65535:
                raise RuleError(f"bad port range {lo}-{hi}")
            r.ports[i].lo, r.ports[i].hi = lo, hi
        r.n_ports = len(self.ports)
        r.ports_negate = int(self.ports_negate)
        scope = 0
        if self.binaries or self.pids:
            scope |= SCOPE_NOT_PROCESS if self.binaries_negate else SCOPE_PROCESS
        if self.cgroup_ids is not None:
            scope |= SCOPE_CGROUP
        r.scope = scope
        check_namespaces(self.namespaces)
        return r


def check_namespaces(namespaces) -> None:
    kinds = [k for k, _, _ in namespaces]
    if len(set(kinds)) != len(kinds) or not all(0 <= k < NS_KINDS for k in kinds):
        raise RuleError("one matchNamespaces entry per namespace kind can be enforced")
    if any(not inums for _, _, inums in namespaces):
        raise RuleError("a matchNamespaces entry needs values")


def _bits(values) -> int:
    out = 0
    for v in values:
        if not 0 <= v < 32:
            raise RuleError(f"value {v} out of range")
        out |= 1 << v
    return out


@dataclass
class SockVerdict:
    """A call a rule refused (action deny) or would have refused (monitor)."""
    ktime: int
    pid: int
    tid: int
    rule: int
    hook: str
    action: int
    family: int
    type: int
    protocol: int
    daddr: str
    dport: int
    cgroup_id: int


class SockEnforcer:
    SOURCE = "enforce_cgroup.c"
    VARIANT = "ENFORCE_SOCKETS"   # the part of SOURCE this enforcer compiles
    PROGRAMS = (
        ("connect4", links.CGROUP_INET4_CONNECT, "CGROUP_SOCK_ADDR"),
        ("connect6", links.CGROUP_INET6_CONNECT, "CGROUP_SOCK_ADDR"),
        ("sendmsg4", links.CGROUP_UDP4_SENDMSG, "CGROUP_SOCK_ADDR"),
        ("sendmsg6", links.CGROUP_UDP6_SENDMSG, "CGROUP_SOCK_ADDR"),
        ("sock_create", links.CGROUP_INET_SOCK_CREATE, "CGROUP_SOCK"),
    )
    # where a Sigkill rule's refused caller is killed (connect4/6 also run for
    # sendto/sendmsg with MSG_FASTOPEN)
    KILL_EXITS = ("sys_exit_connect", "sys_exit_sendto", "sys_exit_sendmsg", "sys_exit_sendmmsg",
                  "sys_exit_socket")

    def __init__(self, cgroup_root: str, macros: dict[str, int], rb_pages: int = 64,
                 exempt_tgid: int | None = None, on_verdict=None):
        """`on_verdict(SockVerdict)`, if given, receives each record as it is
        consumed; otherwise they are collected for `poll()`."""
        from bcc import BPF
        self.bpf = compile_program(self.SOURCE, {
            **macros, self.VARIANT: 1, "RB_PAGES": rb_pages, "MAX_RULES": MAX_RULES,
            "EXEMPT_TGID": os.getpid() if exempt_tgid is None else exempt_tgid})
        self.rules: dict[int, SockRule] = {}
        self._link_fds: list[int] = []
        self._kill_exits: list[str] = []   # attached while a rule kills
        self._verdicts: list[SockVerdict] = []
        self._on_verdict = on_verdict
        cgroup_fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, attach_type, prog_type in self.PROGRAMS:
                # sock_addr programs must name their attach point at load time
                fn = self.bpf.load_func(name.encode(), getattr(BPF, prog_type),
                                        attach_type=attach_type)
                self._link_fds.append(links.link_create(fn.fd, cgroup_fd, attach_type))
        except Exception:
            self.close()
            raise
        finally:
            os.close(cgroup_fd)
        self.bpf[b"events"].open_ring_buffer(self._on_record)

    def _on_record(self, _ctx, data, size):
        verdict = self._decode(data)
        if self._on_verdict is not None:
            self._on_verdict(verdict)
        else:
            self._verdicts.append(verdict)
        return 0

    @staticmethod
    def _decode(data) -> SockVerdict:
        r = ctypes.cast(data, ctypes.POINTER(_Record)).contents
        family = r.family
        raw = bytes(r.daddr)
        if r.hook == HOOK_SOCK_CREATE:
            daddr = ""
        elif family == socket.AF_INET:
            daddr = str(ipaddress.IPv4Address(raw[:4]))
        else:
            daddr = str(ipaddress.IPv6Address(raw))
        return SockVerdict(r.ktime, r.pid, r.tid, r.rule, HOOK_NAMES.get(r.hook, "?"),
                           r.action, family, r.type_, r.protocol, daddr, r.dport, r.cgroup_id)

    # -- rules -------------------------------------------------------------
    def free_slots(self) -> list[int]:
        return [i for i in range(MAX_RULES) if i not in self.rules]

    def set_rule(self, slot: int, rule: SockRule, running: dict[int, str] | None = None) -> None:
        """Install `rule` in `slot`.  `running` (pid -> exec'd binary path)
        scopes processes that exec'd before the rule existed."""
        if not 0 <= slot < MAX_RULES:
            raise RuleError(f"rule slot {slot} out of range (at most {MAX_RULES} rules)")
        struct_ = rule.to_struct()
        bit = 1 << slot
        self._clear_scope(bit)
        for path in rule.binaries:
            key = path.encode()[:BINARY_KEY_LEN - 1].ljust(BINARY_KEY_LEN, b"\0")
            table = self.bpf[b"binary_scope"]
            k = table.Key()
            ctypes.memmove(ctypes.byref(k), key, BINARY_KEY_LEN)
            old = table.get(k)
            table[k] = table.Leaf((old.value if old is not None else 0) | bit)
        for pid, path in (running or {}).items():
            if path in rule.binaries:
                self._or_bits(b"exec_scope", ctypes.c_uint32(pid), bit)
        for pid in rule.pids:
            self._or_bits(b"pid_scope", ctypes.c_uint32(pid), bit)
        for cgid in rule.cgroup_ids or ():
            self._or_bits(b"cgroup_scope", ctypes.c_uint64(cgid), bit)
        for kind, _, inums in rule.namespaces:
            for inum in inums:
                self._or_bits(b"ns_scope", self.bpf[b"ns_scope"].Key(kind, inum), bit)
        self.rules[slot] = rule
        self._sync_kill_exits()        # before the rule is active: a refused caller is always killed
        self._sync_namespace_kinds()   # before the rule is active: it never applies unscoped
        self._note_cgroup_scoped()
        self.bpf[b"rules"][ctypes.c_int(slot)] = struct_

    def set_cgroups(self, slot: int, cgroup_ids: set[int]) -> None:
        """Change the cgroups a rule installed with `cgroup_ids` applies to:
        new ones first, then stale ones out, so a cgroup that stays is never
        left unguarded in between."""
        bit = 1 << slot
        table = self.bpf[b"cgroup_scope"]
        for cgid in cgroup_ids:
            self._or_bits(b"cgroup_scope", ctypes.c_uint64(cgid), bit)
        for k, v in list(table.items()):
            if v.value & bit and k.value not in cgroup_ids:
                rest = v.value & ~bit
                if rest:
                    table[k] = ctypes.c_uint64(rest)
                else:
                    del table[k]

    def clear_rule(self, slot: int) -> None:
        self.bpf[b"rules"][ctypes.c_int(slot)] = self.bpf[b"rules"].Leaf()
        self._clear_scope(1 << slot)
        self.rules.pop(slot, None)
        self._sync_namespace_kinds()
        self._note_cgroup_scoped()
        self._sync_kill_exits()

    def _sync_kill_exits(self) -> None:
        """Attach the kill-on-exit program while some rule kills, detach it
        when none does (the exits of these calls are hot)."""
        from bcc import BPF
        kills = any(r.action == ACTION_KILL for r in self.rules.values())
        if kills and not self._kill_exits:
            for exit_tp in self.KILL_EXITS:
                if BPF.tracepoint_exists("syscalls", exit_tp):   # arm64 has no open/creat
                    self.bpf.attach_tracepoint(tp=f"syscalls:{exit_tp}".encode(),
                                               fn_name=b"kill_after_refusal")
                    self._kill_exits.append(exit_tp)
        elif not kills and self._kill_exits:
            for exit_tp in self._kill_exits:
                self.bpf.detach_tracepoint(tp=f"syscalls:{exit_tp}".encode())
            self._kill_exits = []
            self.bpf[b"kill_pending"].clear()

    def _note_cgroup_scoped(self) -> None:
        """Tell the programs whether to look at cgroups at all (a walk of the
        caller's ancestors, spared when no rule is scoped to cgroups)."""
        scoped = any(r.cgroup_ids is not None for r in self.rules.values())
        self.bpf[b"cgroup_scoped"][ctypes.c_int(0)] = ctypes.c_uint32(int(scoped))

    def _sync_namespace_kinds(self) -> None:
        """Per namespace kind, the rules with an entry on it and those NotIn
        (bpf/ns.h); the programs read the caller's namespaces only while a
        rule has matchNamespaces."""
        kinds = self.bpf[b"ns_kinds"]
        for kind in range(NS_KINDS):
            kr = kinds.Leaf()
            for slot, r in self.rules.items():
                for k, negate, _ in r.namespaces:
                    if k == kind:
                        kr.need |= 1 << slot
                        kr.neg |= (1 << slot) if negate else 0
            kinds[ctypes.c_int(kind)] = kr
        n = sum(1 for r in self.rules.values() if r.namespaces)
        self.bpf[b"ns_in_use"][ctypes.c_int(0)] = ctypes.c_uint32(n)

    def _or_bits(self, table_name: bytes, key, bit: int) -> None:
        table = self.bpf[table_name]
        old = table.get(key)
        table[key] = ctypes.c_uint64((old.value if old is not None else 0) | bit)

    def _clear_scope(self, bit: int) -> None:
        for name in (b"exec_scope", b"pid_scope", b"cgroup_scope", b"binary_scope", b"ns_scope"):
            table = self.bpf[name]
            for k, v in list(table.items()):
                if v.value & bit:
                    rest = v.value & ~bit
                    if rest:
                        table[k] = ctypes.c_uint64(rest)
                    else:
                        del table[k]

    # -- records -----------------------------------------------------------
    def fileno(self) -> int:
        """The ring buffer's fd, for the daemon's epoll (tetrad/poller.py)."""
        return self.bpf[b"events"].map_fd

    def consume(self) -> None:
        self.bpf.ring_buffer_consume()

    def poll(self, timeout_ms: int = 0) -> list[SockVerdict]:
        self.bpf.ring_buffer_poll(timeout_ms)
        out, self._verdicts = self._verdicts, []
        return out

    def lost(self) -> int:
        return sum(sum(v) for _, v in self.bpf[b"lost_records"].items())

    def close(self) -> None:
        for fd in self._link_fds:
            os.close(fd)   # detaches: a link lives as long as its fd
        self._link_fds = []
        self.bpf.cleanup()
