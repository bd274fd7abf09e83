"""Tetragon's event filters (`tetragon.Filter`): each filter is a JSON object
whose keys are ANDed; a list of filters is ORed; an event passes an
allow/deny pair when it matches the allowlist (or there is none) and no
filter of the denylist.

    allow = FilterList.parse(cfg.export_allowlist, "--export-allowlist")
    if passes(allow, deny, event): ...

Keys and their meaning follow Tetragon's pkg/filters: regexes match anywhere
in the string (RE2 search semantics), `namespace: [""]` selects host
processes (no pod), `pid_set` also matches the descendants it sees.
"""

from __future__ import annotations

import re
from typing import Callable

from ..eventtypes import POLICY_KINDS, event_kind, kind_of_type
from .jsonlines import FilterError, parse_objects
from .labels import parse_selector

Predicate = Callable[[dict, str, dict], bool]   # (event, kind, body) -> bool


def _strings(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return value


def _pids(value) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in value):
        raise ValueError(f"expected a list of process ids, got {value!r}")
    return value


def _regexes(value) -> list[re.Pattern]:
    out = []
    for pattern in _strings(value, "regex"):
        try:
            out.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(f"bad regular expression {pattern!r}: {e}") from None
    return out


def _any_search(regexes, text: str) -> bool:
    return any(r.search(text) for r in regexes)


def _process(body: dict):
    p = body.get("process")
    return p if isinstance(p, dict) else None


def _parent(body: dict):
    p = body.get("parent")
    return p if isinstance(p, dict) else None


def _pod(body: dict):
    p = _process(body)
    pod = p.get("pod") if p else None
    return pod if isinstance(pod, dict) else None


# -- one builder per key: JSON value -> predicate ------------------------------
def _binary_regex(value, which=_process) -> Predicate:
    regexes = _regexes(value)

    def match(_e, _k, body):
        p = which(body)
        return p is not None and _any_search(regexes, p.get("binary", ""))
    return match


def _ancestor_binary_regex(value) -> Predicate:
    regexes = _regexes(value)

    def match(_e, _k, body):
        ancestors = [a for a in body.get("ancestors") or [] if isinstance(a, dict)]
        return any(_any_search(regexes, a.get("binary", "")) for a in ancestors)
    return match


def _arguments_regex(value, which=_process) -> Predicate:
    regexes = _regexes(value)

    def match(_e, _k, body):
        p = which(body)
        return p is not None and _any_search(regexes, p.get("arguments", ""))
    return match


def _namespace(value) -> Predicate:
    namespaces = set(_strings(value, "namespace"))

    def match(_e, _k, body):
        if _process(body) is None:
            return False
        pod = _pod(body)
        return ("" in namespaces) if pod is None else pod.get("namespace", "") in namespaces
    return match


def _pod_field_regex(value, field: str) -> Predicate:
    regexes = _regexes(value)

    def match(_e, _k, body):
        pod = _pod(body)
        return pod is not None and _any_search(regexes, pod.get(field, ""))
    return match


def _container_name_regex(value) -> Predicate:
    regexes = _regexes(value)

    def match(_e, _k, body):
        pod = _pod(body)
        container = pod.get("container") if pod else None
        return isinstance(container, dict) and _any_search(regexes, container.get("name", ""))
    return match


def _container_id(value) -> Predicate:
    regexes = _regexes(value)

    def match(_e, _k, body):
        p = _process(body)
        return p is not None and _any_search(regexes, p.get("docker", ""))
    return match


def _pid(value) -> Predicate:
    pids = set(_pids(value))

    def match(_e, _k, body):
        p = _process(body)
        return p is not None and p.get("pid", 0) in pids
    return match


def _pid_set(value) -> Predicate:
    roots = set(_pids(value))
    children: set[int] = set()

    def match(_e, _k, body):
        p = _process(body)
        if p is None:
            return False
        pid = p.get("pid", 0)
        if pid in roots or pid in children:
            return True
        parent = _parent(body)
        if parent is not None and (parent.get("pid", 0) in roots or parent.get("pid", 0) in children):
            children.add(pid)
            return True
        return False
    return match


def _event_set(value) -> Predicate:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of event types, got {value!r}")
    kinds = {kind_of_type(v) for v in value}
    return lambda _e, kind, _b: kind in kinds


def _policy_names(value) -> Predicate:
    names = set(_strings(value, "policy name"))
    return lambda _e, kind, body: kind in POLICY_KINDS and body.get("policy_name", "") in names


def _labels(value) -> Predicate:
    selectors = [parse_selector(s) for s in _strings(value, "label selector")]

    def match(_e, _k, body):
        pod = _pod(body)
        if pod is None:
            return False
        labels = pod.get("pod_labels") or {}
        return any(sel(labels) for sel in selectors)
    return match


def _in_init_tree(value) -> Predicate:
    if isinstance(value, dict) and set(value) <= {"value"}:
        value = value.get("value", False)
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")

    def match(_e, _k, body):
        p = _process(body)
        return p is not None and bool(p.get("in_init_tree", False)) == value
    return match


BUILDERS: dict[str, Callable[[object], Predicate]] = {
    "event_set": _event_set,
    "binary_regex": _binary_regex,
    "parent_binary_regex": lambda v: _binary_regex(v, _parent),
    "ancestor_binary_regex": _ancestor_binary_regex,
    "namespace": _namespace,
    "namespace_regex": lambda v: _pod_field_regex(v, "namespace"),
    "pod_regex": lambda v: _pod_field_regex(v, "name"),
    "container_name_regex": _container_name_regex,
    "container_id": _container_id,
    "pid": _pid,
    "pid_set": _pid_set,
    "arguments_regex": _arguments_regex,
    "parent_arguments_regex": lambda v: _arguments_regex(v, _parent),
    "labels": _labels,
    "policy_names": _policy_names,
    "in_init_tree": _in_init_tree,
}


class Filter:
    """One filter object: all its keys must match."""

    def __init__(self, spec: dict, where: str = "filter"):
        self.spec = spec
        self.predicates: list[Predicate] = []
        for key, value in spec.items():
            builder = BUILDERS.get(key)
            if builder is None:
                raise FilterError(f"{where}: unknown key \"{key}\" (known: {', '.join(BUILDERS)})")
            try:
                self.predicates.append(builder(value))
            except ValueError as e:
                raise FilterError(f"{where}: key \"{key}\": {e}") from None

    def matches(self, event: dict, kind: str, body: dict) -> bool:
        return all(p(event, kind, body) for p in self.predicates)


class FilterList:
    """Filters ORed together."""

    def __init__(self, filters: list[Filter]):
        self.filters = filters

    def __bool__(self) -> bool:
        return bool(self.filters)

    def __len__(self) -> int:
        return len(self.filters)

    @classmethod
    def parse(cls, text: str, where: str) -> "FilterList":
        """From the option text; FilterError naming `where`, the line and the key."""
        return cls([Filter(obj, f"{where}: line {line}") for line, obj in parse_objects(text or "", where)])

    @classmethod
    def from_specs(cls, specs: list, where: str) -> "FilterList":
        if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
            raise FilterError(f"{where}: expected a list of filter objects")
        return cls([Filter(s, f"{where}[{i}]") for i, s in enumerate(specs)])

    def match_one(self, event: dict, kind: str | None = None, body: dict | None = None) -> bool:
        if kind is None:
            kind = event_kind(event)
            body = event.get(kind) if kind else None
        if not isinstance(body, dict):
            return False
        return any(f.matches(event, kind, body) for f in self.filters)


def passes(allow: FilterList, deny: FilterList, event: dict) -> bool:
    """Tetragon's filters.Apply: allowlist matched (or empty), denylist not."""
    kind = event_kind(event)
    body = event.get(kind) if kind else None
    if allow and not allow.match_one(event, kind, body):
        return False
    return not (deny and deny.match_one(event, kind, body))
