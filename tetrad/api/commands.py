"""The commands the daemon serves on its socket besides the event stream:
`status` always; `tracingpolicy.list|add|delete|enable|disable|set-mode` when the
daemon has a policy manager (changes for root only) (`daemon.policy_manager`, with list(),
add(path), delete(name), enable(name), disable(name)).  Handlers run in the
daemon's thread (ApiServer.run_commands)."""

from __future__ import annotations

import dataclasses


def to_jsonable(value):
    """Policy manager results (dicts, dataclasses, objects with to_dict) as JSON."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value):
        return to_jsonable(dataclasses.asdict(value))
    return str(value)


def _policy_call(method, arg_name: str | None):
    def handler(args: dict):
        if arg_name is not None:
            value = args.get(arg_name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"missing {arg_name}")
            call = lambda: method(value)    # noqa: E731
        else:
            call = method
        try:
            result = call()
            if result is False:   # delete/enable/disable found no such policy
                raise KeyError(f"no tracing policy named {value!r}")
            return to_jsonable(result)
        except (ValueError, KeyError, OSError):
            raise
        except Exception as e:              # the engine's own error types
            raise ValueError(str(e) or type(e).__name__) from e
    return handler


def register(server, daemon) -> None:
    server.register("status", lambda _args: daemon.status())
    pm = getattr(daemon, "policy_manager", None)
    if pm is None:
        return
    server.register("tracingpolicy.list", _policy_call(pm.list, None))
    server.register("tracingpolicy.add", _policy_call(pm.add, "path"), privileged=True)
    for action in ("delete", "enable", "disable"):
        server.register(f"tracingpolicy.{action}", _policy_call(getattr(pm, action), "name"), privileged=True)

    def set_mode(args: dict):
        mode = args.get("mode")
        return _policy_call(lambda name: pm.set_mode(name, mode), "name")(args)
    server.register("tracingpolicy.set-mode", set_mode, privileged=True)
