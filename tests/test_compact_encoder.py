"""Golden vectors for the compact encoder: Tetragon JSON in, the line
`tetra getevents -o compact` prints out (tests/data/compact_vectors.json,
built by tests/data/make_compact_vectors.py; the vectors taken from
Tetragon's own encoder tests keep their expected strings)."""

import json
from pathlib import Path

import pytest

from tetrad.encoder.compact import CompactEncoder, EncodeError
from tetrad.encoder.goquote import go_quote, maybe_quote

VECTORS = json.loads((Path(__file__).parent / "data" / "compact_vectors.json").read_text())


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_golden(vec):
    enc = CompactEncoder(color=vec.get("color", "never"), timestamps=vec.get("timestamps", False),
                         stack_traces=vec.get("stack_traces", True), ima_hash=vec.get("ima_hash", True))
    if vec.get("full"):
        assert enc.encode_full(vec["event"]) == vec["expected"]
    elif vec.get("trailer"):
        assert enc.stack_trace_lines(vec["event"]) + enc.ima_hash_lines(vec["event"]) == vec["expected"]
    else:
        assert enc.encode(vec["event"]) == vec["expected"]


def test_every_kind_has_a_vector():
    from tetrad.eventtypes import EVENT_TYPES, event_kind
    covered = {event_kind(v["event"]) for v in VECTORS}
    assert covered == set(EVENT_TYPES)


def test_go_quote_matches_strconv():
    # strconv.Quote outputs for these inputs
    assert go_quote("") == '""'
    assert go_quote("a b") == '"a b"'
    assert go_quote("\x07\x08\x0c\n\r\t\x0b") == '"\\a\\b\\f\\n\\r\\t\\v"'
    assert go_quote("\x00\x1b\x7f") == '"\\x00\\x1b\\x7f"'
    assert go_quote("\u0085\u00a0\u2028") == '"\\u0085\\u00a0\\u2028"'
    assert go_quote("\U0001F600") == '"\U0001F600"'
    assert maybe_quote("/usr/bin/ls") == "/usr/bin/ls"
    assert maybe_quote("") == ""


def test_no_control_character_reaches_the_terminal():
    enc = CompactEncoder("never")
    hostile = "".join(chr(c) for c in range(0, 0x20)) + "\x7f\u009b\u202e"
    line = enc.encode({"process_exec": {"process": {"binary": hostile, "arguments": hostile}},
                       "node_name": hostile})
    assert not any(ord(ch) < 0x20 or 0x7f <= ord(ch) < 0xa0 or ch == "\u202e" for ch in line)


@pytest.mark.parametrize("event", [
    {},
    {"process_exec": {}},
    {"process_exit": {"status": 1}},
    {"process_kprobe": {"function_name": "x"}},
])
def test_unrenderable_events_are_errors(event):
    with pytest.raises(EncodeError):
        CompactEncoder("never").encode(event)


def test_auto_colour_is_off_for_a_pipe(tmp_path):
    with open(tmp_path / "out", "w") as f:
        enc = CompactEncoder("auto", stream=f)
        assert "\x1b" not in enc.encode({"process_exec": {"process": {"binary": "/bin/x"}}})


def test_auto_colour_is_on_for_a_terminal(monkeypatch):
    import os
    import pty
    master, slave = pty.openpty()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    try:
        with os.fdopen(slave, "w") as f:
            assert "\x1b[34m" in CompactEncoder("auto", stream=f).encode(
                {"process_exec": {"process": {"binary": "/bin/x"}}})
            monkeypatch.setenv("NO_COLOR", "1")
            assert "\x1b" not in CompactEncoder("auto", stream=f).encode(
                {"process_exec": {"process": {"binary": "/bin/x"}}})
    finally:
        os.close(master)


def test_undecodable_bytes_render_as_replacement_characters():
    assert maybe_quote("/tmp/a\udcffb") == "/tmp/a\ufffdb"
    assert go_quote("a b\udcff") == '"a b\ufffd"'
