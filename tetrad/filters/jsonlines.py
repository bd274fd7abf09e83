"""Reading Tetragon's filter options: a sequence of JSON objects, one per
line by convention (Tetragon reads them as a JSON stream), each returned with
the line it starts on so errors can point at it."""

from __future__ import annotations

import json


class FilterError(ValueError):
    """A malformed filter; the message names the option, line and key."""


def parse_objects(text: str, where: str) -> list[tuple[int, dict]]:
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            return out
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise FilterError(f"{where}: line {e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise FilterError(f"{where}: line {line}: expected a JSON object, got {json.dumps(obj)}")
        out.append((line, obj))
