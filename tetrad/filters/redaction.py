"""Redaction filters (Tetragon's `--redaction-filters`): in the arguments of
processes whose binary matches `binary_regex` (or of all processes when it
is absent), each capture group of a `redact` regex is replaced by `*****`.

    {"binary_regex": ["(?:^|/)mysql$"], "redact": ["--password[= ](\\S+)"]}
"""

from __future__ import annotations

import re

from ..eventtypes import event_kind
from .jsonlines import FilterError, parse_objects

REDACTED = "*****"
_KEYS = ("binary_regex", "redact")


def _compile(values, where: str, key: str) -> list[re.Pattern]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FilterError(f"{where}: key \"{key}\": expected a list of regular expressions")
    out = []
    for v in values:
        try:
            out.append(re.compile(v))
        except re.error as e:
            raise FilterError(f"{where}: key \"{key}\": bad regular expression {v!r}: {e}") from None
    return out


def redact_string(regex: re.Pattern, text: str) -> str:
    def replace(m: re.Match) -> str:
        s, base = m.group(0), m.start()
        out, last = [], 0
        for g in range(1, (regex.groups or 0) + 1):
            start, end = m.span(g)
            if start < 0 or start - base < last:   # unmatched, or inside one already redacted
                continue
            out.append(s[last:start - base])
            out.append(REDACTED)
            last = end - base
        out.append(s[last:])
        return "".join(out)
    return regex.sub(replace, text)


class RedactionFilter:
    def __init__(self, spec: dict, where: str):
        unknown = set(spec) - set(_KEYS)
        if unknown:
            raise FilterError(f"{where}: unknown key \"{sorted(unknown)[0]}\" (known: {', '.join(_KEYS)})")
        self.binaries = _compile(spec.get("binary_regex", []), where, "binary_regex")
        self.redact = _compile(spec.get("redact", []), where, "redact")

    def apply(self, binary: str, arguments: str) -> str:
        if self.binaries and not any(r.search(binary) for r in self.binaries):
            return arguments
        for r in self.redact:
            arguments = redact_string(r, arguments)
        return arguments


class Redactor:
    def __init__(self, filters: list[RedactionFilter]):
        self.filters = filters

    def __bool__(self) -> bool:
        return bool(self.filters)

    @classmethod
    def parse(cls, text: str, where: str = "--redaction-filters") -> "Redactor":
        return cls([RedactionFilter(obj, f"{where}: line {line}") for line, obj in parse_objects(text or "", where)])

    def _process(self, proc) -> bool:
        if not isinstance(proc, dict) or not proc.get("arguments"):
            return False
        args = proc["arguments"]
        for f in self.filters:
            args = f.apply(proc.get("binary", ""), args)
        changed = args != proc["arguments"]
        if changed:
            proc["arguments"] = args
        return changed

    def apply(self, event: dict) -> bool:
        """Redact in place the arguments of the event's process, parent and
        ancestors; True if anything changed (the JSON line must be rebuilt)."""
        kind = event_kind(event)
        body = event.get(kind) if kind else None
        if not isinstance(body, dict):
            return False
        changed = False
        for proc in [body.get("process"), body.get("parent"), *(body.get("ancestors") or [])]:
            changed |= self._process(proc)
        return changed
