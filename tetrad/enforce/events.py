"""Events for calls the cgroup programs refused (or, in monitor mode, would
have refused): Tetragon's process_kprobe, named after the policy's hook, with
`action` saying what was done."""

from __future__ import annotations

from ..policy.events import FAMILY, PROTOCOL, SOCK_TYPE
from ..timefmt import rfc3339
from .sock import ACTION_MONITOR, SockVerdict

MONITOR_NOTE = "monitor mode: not enforced"


def verdict_event(v: SockVerdict, rule, policy, hook, builder, proc, parent) -> tuple[str, dict]:
    """`rule` is the tetrad.enforce.network.NetworkRule the verdict came from."""
    body: dict = {}
    body["process"] = builder.process_json(proc) if proc is not None else {"pid": v.pid, "tid": v.tid}
    if parent is not None:
        body["parent"] = builder.process_json(parent)
    body["function_name"] = hook.name
    body["args"] = _args(v, rule.call)
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
