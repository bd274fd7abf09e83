"""Go's `strconv.Quote`, so that quoted strings match tetra's output byte for
byte and no control character from an event ever reaches a terminal raw."""

from __future__ import annotations

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\"}


def go_quote(s: str) -> str:
    out = ['"']
    for ch in _valid(s):
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():          # Go's IsPrint: L, M, N, P, S and U+0020
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x20 or cp == 0x7F:
                out.append(f"\\x{cp:02x}")
            elif cp < 0x10000:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


def _valid(s: str) -> str:
    """Lone surrogates (undecodable bytes kept by surrogateescape) become
    U+FFFD, as Go sees invalid UTF-8."""
    if any("\ud800" <= ch <= "\udfff" for ch in s):
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in s)
    return s


def maybe_quote(s: str) -> str:
    """Quote strings holding a space or a non-printable character (tetra's
    maybeQuote); others pass unchanged."""
    s = _valid(s)
    for ch in s:
        if ch == " " or not ch.isprintable():
            return go_quote(s)
    return s
