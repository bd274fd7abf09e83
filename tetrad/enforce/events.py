"""Events for calls the cgroup programs refused (or, in monitor mode, would
have refused): Tetragon's process_kprobe, named after the policy's hook, with
`action` saying what was done."""

from __future__ import annotations

from ..policy.events import FAMILY, PROTOCOL, SOCK_TYPE
from ..timefmt import rfc3339
from .devices import OPEN_CALLS
from .network import call_name
from .sock import ACTION_MONITOR, SockVerdict

MONITOR_NOTE = "monitor mode: not enforced"


def verdict_event(v: SockVerdict, rule, policy, hook, builder, proc, parent) -> tuple[str, dict]:
    """`rule` is the tetrad.enforce.network.NetworkRule the verdict came from."""
    return _event(v, rule, _args(v, rule.call), policy, hook, builder, proc, parent)


def device_event(v, spec, policy, hook, builder, proc, parent) -> tuple[str, dict]:
    """A refused (or, in monitor mode, reported) open of a device node; `spec`
    is the tetrad.enforce.devices.DeviceRuleSpec the verdict came from.  The
    one argument is the path: the node the policy's path resolved to for that
    device (the kernel judges device numbers, not names)."""
    index = OPEN_CALLS.get(call_name(hook.name), 0)
    arg_type = next((a.type for a in hook.args if a.index == index), "string")
    path = spec.paths.get(v.device, "")
    args = [{"string_arg": path} if arg_type == "string" else {f"{arg_type}_arg": {"path": path}}]
    return _event(v, spec, args, policy, hook, builder, proc, parent)


def _event(v, rule, args, policy, hook, builder, proc, parent) -> tuple[str, dict]:
    body: dict = {}
    body["process"] = builder.process_json(proc) if proc is not None else {"pid": v.pid, "tid": v.tid}
    if parent is not None:
        body["parent"] = builder.process_json(parent)
    body["function_name"] = hook.name
    body["args"] = args
    monitor = v.action == ACTION_MONITOR
    if not monitor and not rule.kill:
        body["return"] = {"int_arg": -rule.errno}
    body["action"] = "KPROBE_ACTION_SIGKILL" if rule.kill else "KPROBE_ACTION_OVERRIDE"
    body["policy_name"] = policy.name
    message = hook.message
    if monitor:
        message = f"{message} ({MONITOR_NOTE})" if message else MONITOR_NOTE
    if message:
        body["message"] = message
    if hook.tags:
        body["tags"] = list(hook.tags)
    return "process_kprobe", {"process_kprobe": body, "node_name": builder.node_name,
                              "time": rfc3339(builder.clock.to_wall_ns(v.ktime))}


def _args(v: SockVerdict, call: str) -> list[dict]:
    family = FAMILY.get(v.family, str(v.family))
    if v.hook == "socket":
        return [{"int_arg": v.family}, {"int_arg": v.type}, {"int_arg": v.protocol}]
    if call.endswith("tcp_connect") or call.endswith("udp_sendmsg"):
        return [{"sock_arg": {"family": family, "type": SOCK_TYPE.get(v.type, str(v.type)),
                              "protocol": PROTOCOL.get(v.protocol, str(v.protocol)),
                              "daddr": v.daddr, "dport": v.dport}}]
    return [{"sockaddr_arg": {"family": family, "addr": v.daddr, "port": v.dport}}]
