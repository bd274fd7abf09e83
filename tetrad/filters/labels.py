"""Kubernetes label selectors (`app=web,tier!=db`, `env in (a,b)`, `!key`,
`key`, `n>3`), as Tetragon's `labels` filter accepts them."""

from __future__ import annotations

import re

_REQ = re.compile(r"""\s*(?:
    (?P<not>!)\s*(?P<nkey>[\w./-]+) |
    (?P<key>[\w./-]+)\s*(?:
        (?P<op>==|!=|=|>|<)\s*(?P<value>[\w.-]*) |
        (?P<setop>in|notin)\s*\((?P<values>[^)]*)\)
    )?
)\s*(?:,|$)""", re.VERBOSE)


def parse_selector(text: str):
    """A predicate over a labels dict; ValueError for a malformed selector."""
    reqs, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _REQ.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"bad label selector {text!r} at offset {pos}")
        pos = m.end()
        reqs.append(_requirement(m))
    return lambda labels: all(r(labels or {}) for r in reqs)


def _requirement(m):
    if m.group("not"):
        key = m.group("nkey")
        return lambda labels: key not in labels
    key, op = m.group("key"), m.group("op")
    if m.group("setop"):
        values = {v.strip() for v in m.group("values").split(",") if v.strip()}
        if m.group("setop") == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: key not in labels or labels[key] not in values
    if op is None:
        return lambda labels: key in labels
    value = m.group("value")
    if op in ("=", "=="):
        return lambda labels: labels.get(key) == value
    if op == "!=":
        return lambda labels: labels.get(key) != value
    bound = int(value)
    if op == ">":
        return lambda labels: key in labels and _int(labels[key]) is not None and _int(labels[key]) > bound
    return lambda labels: key in labels and _int(labels[key]) is not None and _int(labels[key]) < bound


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
