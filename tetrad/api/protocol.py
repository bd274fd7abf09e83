"""The wire format of the daemon's unix socket.

Every message is one JSON object on one line (UTF-8, `\\n`-terminated).
The client opens a connection and sends one request:

    {"op": "status"}
    {"op": "tracingpolicy.add", "args": {"path": "/x.yaml"}}
    {"op": "getevents", "args": {"allow_list": [{...}], "deny_list": [...],
                                 "field_filters": [{...}]}}

A command gets one reply and the connection closes:

    {"ok": true, "result": ...}        or        {"ok": false, "error": "..."}

`getevents` gets `{"ok": true, "result": {"stream": "events"}}`, then events,
one Tetragon JSON event per line, until either side closes.  The daemon
interleaves notices that are not events, under the key `tetrad_notice`,
e.g. when the client fell behind and events were dropped for it:

    {"tetrad_notice": {"dropped": 120, "message": "..."}}
"""

from __future__ import annotations

import json

NOTICE_KEY = "tetrad_notice"
MAX_REQUEST_BYTES = 1 << 20


def parse_address(address: str) -> str:
    """`unix:///run/tetrad/tetrad.sock` (or a bare path) -> the socket path."""
    if address.startswith("unix://"):
        return address[len("unix://"):]
    if "://" in address:
        raise ValueError(f"unsupported server address {address!r}: only unix:// sockets are served")
    return address


def encode(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def ok(result) -> bytes:
    return encode({"ok": True, "result": result})


def error(message: str) -> bytes:
    return encode({"ok": False, "error": message})
