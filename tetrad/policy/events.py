"""Policy records (bpf/policy.c `struct policy_record`) to Tetragon's
process_kprobe / process_tracepoint / process_uprobe / process_lsm events.

Arguments are rendered as Tetragon's `KprobeArgument` JSON: int_arg,
uint_arg, long_arg and size_arg (64-bit values as strings, as protobuf JSON
does), string_arg, bytes_arg (base64), file_arg/path_arg {path}, sock_arg,
sockaddr_arg.
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from dataclasses import dataclass

from ..process import flags as pflags
from ..timefmt import rfc3339
from .model import HOOK_KPROBE, HOOK_LSM, HOOK_TRACEPOINT, Hook, Policy
from .program import ACTION_NAMES, POS_RET

# header (type, size, ktime), hook, pid, tid, selector, action, flags, ret, arg_len[8]
_FIXED = struct.Struct("<B3xIQ6Iq8I")
FIXED_SIZE = _FIXED.size
assert FIXED_SIZE == 80
_SOCK = struct.Struct("<5HBxII16s16sQ")   # struct sock_info
RECF_TRUNCATED = 1

FAMILY = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6"}
SOCK_TYPE = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET",
             6: "SOCK_DCCP", 10: "SOCK_PACKET"}
PROTOCOL = {0: "IPPROTO_IP", 1: "IPPROTO_ICMP", 6: "IPPROTO_TCP", 17: "IPPROTO_UDP",
            58: "IPPROTO_ICMPV6", 132: "IPPROTO_SCTP", 255: "IPPROTO_RAW", 262: "IPPROTO_MPTCP"}
TCP_STATE = {1: "TCP_ESTABLISHED", 2: "TCP_SYN_SENT", 3: "TCP_SYN_RECV", 4: "TCP_FIN_WAIT1",
             5: "TCP_FIN_WAIT2", 6: "TCP_TIME_WAIT", 7: "TCP_CLOSE", 8: "TCP_CLOSE_WAIT",
             9: "TCP_LAST_ACK", 10: "TCP_LISTEN", 11: "TCP_CLOSING", 12: "TCP_NEW_SYN_RECV"}


@dataclass(slots=True)
class PolicyRecord:
    ktime: int
    hook: int
    pid: int
    tid: int
    selector: int
    action: int
    flags: int
    ret: int
    values: list   # bytes per position: arguments, then the return argument at POS_RET


def decode(buf: bytes) -> PolicyRecord:
    f = _FIXED.unpack_from(buf)
    _type, _size, ktime, hook, pid, tid, selector, action, flags, ret = f[:10]
    lens = f[10:18]
    values, off = [], FIXED_SIZE
    for n in lens[:POS_RET + 1]:
        values.append(buf[off:off + n])
        off += n
    return PolicyRecord(ktime, hook, pid, tid, selector, action, flags, ret, values)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _addr(family: int, raw: bytes) -> str:
    if family == 10:
        return str(ipaddress.IPv6Address(raw[:16]))
    return str(ipaddress.IPv4Address(raw[:4]))


def render_arg(type_name: str, raw: bytes, label: str = "") -> dict | None:
    """One KprobeArgument; None for `nop`."""
    out: dict
    if type_name == "nop":
        return None
    if type_name in ("string", "filename"):
        out = {"string_arg": _text(raw)}
    elif type_name == "char_buf":
        out = {"bytes_arg": base64.b64encode(raw).decode()}
    elif type_name in ("fd", "file"):
        out = {"file_arg": {"path": _text(raw)}}
    elif type_name == "path":
        out = {"path_arg": {"path": _text(raw)}}
    elif type_name in ("sock", "sockaddr"):
        family, stype, proto, sport, dport, state, mark, prio, saddr, daddr, cookie = _SOCK.unpack_from(
            raw.ljust(_SOCK.size, b"\0"))
        if type_name == "sockaddr":
            out = {"sockaddr_arg": {"family": FAMILY.get(family, str(family)),
                                    "addr": _addr(family, saddr), "port": sport}}
        else:
            sock = {"family": FAMILY.get(family, str(family)), "type": SOCK_TYPE.get(stype, str(stype)),
                    "protocol": PROTOCOL.get(proto, str(proto)), "mark": mark, "priority": prio,
                    "saddr": _addr(family, saddr), "daddr": _addr(family, daddr), "sport": sport,
                    "dport": dport, "cookie": str(cookie), "state": TCP_STATE.get(state, str(state))}
            out = {"sock_arg": {k: v for k, v in sock.items() if v not in (0, "0", "")}}
    else:
        (value,) = struct.unpack("<Q", raw.ljust(8, b"\0")[:8])
        signed = value - (1 << 64) if value >= 1 << 63 else value
        if type_name in ("int", "sint32", "int32", "sint16", "int16", "sint8", "int8"):
            out = {"int_arg": signed}
        elif type_name in ("uint32", "uint16", "uint8"):
            out = {"uint_arg": value}
        elif type_name in ("long", "sint64", "int64", "syscall64"):
            out = {"long_arg": str(signed)}
        else:   # ulong, uint64, size_t, auto
            out = {"size_arg": str(value)}
    if label:
        out["label"] = label
    return out


class PolicyEvents:
    """Builds the events of one policy's records."""

    def __init__(self, policy: Policy, builder, cache, sync_processes=lambda: None):
        """`sync_processes()` drains the process sensor: a policy record can be
        consumed before the exec record of its process, which sits in another
        ring buffer."""
        self.policy = policy
        self.builder = builder
        self.cache = cache
        self.sync_processes = sync_processes

    def _process(self, pid: int):
        proc = self.cache.find(pid)
        if proc is None or proc.flags & pflags.CLONE:
            self.sync_processes()
            proc = self.cache.find(pid)
        return proc

    def build(self, rec: PolicyRecord) -> tuple[str, dict]:
        hook: Hook = self.policy.hooks[rec.hook]
        body: dict = {}
        proc = self._process(rec.pid)
        if proc is not None:
            body["process"] = self.builder.process_json(proc)
            parent = self.cache.parent_of(proc)
            if parent is not None:
                body["parent"] = self.builder.process_json(parent)
        else:
            body["process"] = {"pid": rec.pid, "tid": rec.tid}
        args = []
        for j, arg in enumerate(hook.args):
            rendered = render_arg(self._type(hook, j), rec.values[j], arg.label)
            if rendered is not None and arg.type == "char_buf":
                rendered = self._mark_truncated(hook, rec, arg, rendered)
            if rendered is not None:
                args.append(rendered)
        if hook.kind in (HOOK_KPROBE, HOOK_LSM):
            body["function_name"] = hook.name
        elif hook.kind == HOOK_TRACEPOINT:
            body["subsys"], body["event"] = hook.subsystem, hook.event
        else:
            body["path"], body["symbol"] = hook.binary, hook.symbol
        if args:
            body["args"] = args
        if hook.return_arg is not None:
            ret = render_arg(hook.return_arg.type, rec.values[POS_RET] or struct.pack("<q", rec.ret))
            if ret is not None:
                body["return"] = ret
        body["action"] = "KPROBE_ACTION_" + ACTION_NAMES.get(rec.action, "Post").upper()
        body["policy_name"] = self.policy.name
        if hook.message:
            body["message"] = hook.message
        if hook.tags:
            body["tags"] = list(hook.tags)
        kind = hook.event_type
        return kind, {kind: body, "node_name": self.builder.node_name,
                      "time": rfc3339(self.builder.clock.to_wall_ns(rec.ktime))}

    @staticmethod
    def _mark_truncated(hook: Hook, rec: PolicyRecord, arg, rendered: dict) -> dict:
        """A buffer longer than what BPF copied (4096 bytes) becomes Tetragon's
        truncated_bytes_arg with its original size."""
        size = None
        if arg.return_copy:
            size = rec.ret
        elif arg.size_arg_index:
            for j, other in enumerate(hook.args):
                if other.index == arg.size_arg_index - 1:
                    size = struct.unpack("<q", rec.values[j].ljust(8, b"\0")[:8])[0]
        copied = len(base64.b64decode(rendered["bytes_arg"]))
        if size is None or size <= copied:
            return rendered
        out = {"truncated_bytes_arg": {"orig_size": str(size), "bytes_arg": rendered.pop("bytes_arg")}}
        out.update(rendered)   # the label, if any
        return out

    @staticmethod
    def _type(hook: Hook, j: int) -> str:
        t = hook.args[j].type
        return "uint64" if t == "auto" else t
