"""Tetragon's event kinds: the JSON key of each (`process_exec`) and its
`EventType` enum name and number (`PROCESS_EXEC` = 1), as used by filters
(`event_set`), `tetrad getevents --event-types` and field filters."""

from __future__ import annotations

EVENT_TYPES = {
    "process_exec": ("PROCESS_EXEC", 1),
    "process_exit": ("PROCESS_EXIT", 5),
    "process_kprobe": ("PROCESS_KPROBE", 9),
    "process_tracepoint": ("PROCESS_TRACEPOINT", 10),
    "process_loader": ("PROCESS_LOADER", 11),
    "process_uprobe": ("PROCESS_UPROBE", 12),
    "process_throttle": ("PROCESS_THROTTLE", 27),
    "process_lsm": ("PROCESS_LSM", 28),
    "process_usdt": ("PROCESS_USDT", 29),
    "test": ("TEST", 40000),
    "rate_limit_info": ("RATE_LIMIT_INFO", 40001),
}
KIND_BY_NAME = {name: kind for kind, (name, _) in EVENT_TYPES.items()}
KIND_BY_NUMBER = {num: kind for kind, (_, num) in EVENT_TYPES.items()}
# Kinds whose `policy_name` filters see (as in Tetragon, usdt is not among them).
POLICY_KINDS = ("process_kprobe", "process_tracepoint", "process_uprobe", "process_lsm")


def event_kind(event: dict) -> str | None:
    """The kind of a Tetragon event object, or None if it holds none."""
    for key in event:
        if key in EVENT_TYPES:
            return key
    return None


def kind_of_type(value) -> str:
    """`PROCESS_EXEC`, `process_exec` or 1 -> "process_exec"; ValueError if none."""
    if isinstance(value, bool):
        raise ValueError(f"not an event type: {value!r}")
    if isinstance(value, int):
        if value in KIND_BY_NUMBER:
            return KIND_BY_NUMBER[value]
    elif isinstance(value, str):
        if value.upper() in KIND_BY_NAME:
            return KIND_BY_NAME[value.upper()]
    raise ValueError(f"unknown event type {value!r} (known: {', '.join(KIND_BY_NAME)})")
