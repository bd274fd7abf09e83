"""Field filters (Tetragon's `--field-filters` and tetra's -f/-F): keep only,
or drop, the listed fields of the event object (`process.binary`,
`parent`, ...), for the listed event types or all.  `node_name` and `time`
sit outside the event object and are always kept.

    {"event_set": ["PROCESS_EXEC"], "fields": "process.pid,parent", "action": "INCLUDE"}
"""

from __future__ import annotations

from ..eventtypes import event_kind, kind_of_type
from .jsonlines import FilterError, parse_objects

ACTIONS = ("INCLUDE", "EXCLUDE")
_KEYS = {"event_set", "fields", "action", "invert_event_set"}


def _tree(paths: list[str]) -> dict:
    tree: dict = {}
    for path in paths:
        node = tree
        for part in path.split("."):
            node = node.setdefault(part, {})
    return tree


def _include(value, tree: dict):
    if not tree:
        return value
    if isinstance(value, list):
        return [_include(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: _include(v, tree[k]) for k, v in value.items() if k in tree}


def _exclude(value, tree: dict):
    if isinstance(value, list):
        return [_exclude(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        sub = tree.get(k)
        if sub is None:
            out[k] = v
        elif sub:                     # an inner node: drop only below it
            out[k] = _exclude(v, sub)
    return out


class FieldFilter:
    def __init__(self, fields: list[str], action: str = "INCLUDE", event_set=(), invert: bool = False):
        if action not in ACTIONS:
            raise ValueError(f"action must be INCLUDE or EXCLUDE, got {action!r}")
        self.tree = _tree([f for f in fields if f])
        self.include = action == "INCLUDE"
        self.kinds = {kind_of_type(t) for t in event_set}
        self.invert = invert

    @classmethod
    def from_spec(cls, spec: dict, where: str) -> "FieldFilter":
        unknown = set(spec) - _KEYS
        if unknown:
            raise FilterError(f"{where}: unknown key \"{sorted(unknown)[0]}\" (known: {', '.join(sorted(_KEYS))})")
        fields = spec.get("fields", "")
        if isinstance(fields, dict):          # a protobuf FieldMask written out
            fields = ",".join(fields.get("paths", []))
        if not isinstance(fields, str):
            raise FilterError(f"{where}: key \"fields\": expected a comma-separated string")
        invert = spec.get("invert_event_set", False)
        if isinstance(invert, dict):
            invert = invert.get("value", False)
        try:
            return cls([f.strip() for f in fields.split(",")], str(spec.get("action", "INCLUDE")).upper(),
                       spec.get("event_set") or [], bool(invert))
        except ValueError as e:
            key = "action" if "action" in str(e) else "event_set"
            raise FilterError(f"{where}: key \"{key}\": {e}") from None

    def applies_to(self, kind: str) -> bool:
        if not self.kinds:
            return True
        return (kind in self.kinds) != self.invert

    def apply(self, event: dict) -> dict:
        """A filtered copy of `event` (or `event` itself when not concerned)."""
        kind = event_kind(event)
        if kind is None or not self.applies_to(kind):
            return event
        out = dict(event)
        body = event[kind] or {}
        out[kind] = _include(body, self.tree) if self.include else _exclude(body, self.tree)
        return out


def parse_field_filters(text: str, where: str = "--field-filters") -> list[FieldFilter]:
    return [FieldFilter.from_spec(obj, f"{where}: line {line}") for line, obj in parse_objects(text or "", where)]


def apply_all(filters: list[FieldFilter], event: dict) -> dict:
    for f in filters:
        event = f.apply(event)
    return event
