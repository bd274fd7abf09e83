"""Rendering policy records as Tetragon's KprobeArgument JSON (recorded
bytes, no kernel needed)."""

from __future__ import annotations

import base64
import socket
import struct

from tetrad.policy.events import FIXED_SIZE, decode, render_arg


def test_integers_as_protobuf_json():
    minus_one = struct.pack("<q", -1)
    assert render_arg("int", minus_one) == {"int_arg": -1}
    assert render_arg("uint32", struct.pack("<Q", 7)) == {"uint_arg": 7}
    assert render_arg("long", minus_one) == {"long_arg": "-1"}            # int64: a string
    assert render_arg("size_t", struct.pack("<Q", 4096)) == {"size_arg": "4096"}
    assert render_arg("nop", b"") is None
    assert render_arg("int", struct.pack("<q", 3), label="fd") == {"int_arg": 3, "label": "fd"}


def test_strings_buffers_and_files():
    assert render_arg("string", b"/etc/passwd") == {"string_arg": "/etc/passwd"}
    assert render_arg("char_buf", b"\x00\x01hi") == {"bytes_arg": base64.b64encode(b"\x00\x01hi").decode()}
    assert render_arg("fd", b"/etc/hosts") == {"file_arg": {"path": "/etc/hosts"}}
    assert render_arg("file", b"/etc/hosts") == {"file_arg": {"path": "/etc/hosts"}}
    assert render_arg("path", b"/tmp") == {"path_arg": {"path": "/tmp"}}


def test_sock_and_sockaddr():
    info = struct.pack("<5HBxII16s16sQ", 2, 1, 6, 40000, 80, 1, 0, 0,
                       socket.inet_aton("10.0.0.1").ljust(16, b"\0"),
                       socket.inet_aton("142.250.207.110").ljust(16, b"\0"), 77)
    assert render_arg("sock", info) == {"sock_arg": {
        "family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "saddr": "10.0.0.1",
        "daddr": "142.250.207.110", "sport": 40000, "dport": 80, "cookie": "77", "state": "TCP_ESTABLISHED"}}
    six = struct.pack("<5HBxII16s16sQ", 10, 0, 0, 443, 0, 0, 0, 0, socket.inet_pton(socket.AF_INET6, "::1"),
                      b"\0" * 16, 0)
    assert render_arg("sockaddr", six) == {"sockaddr_arg": {"family": "AF_INET6", "addr": "::1", "port": 443}}


def test_decode_splits_positions():
    data = b"/etc/x" + struct.pack("<q", 5)
    header = struct.pack("<B3xIQ6Iq8I", 5, FIXED_SIZE + len(data), 123, 2, 10, 11, 1, 3, 0, -9,
                         6, 8, 0, 0, 0, 0, 0, 0)
    rec = decode(header + data)
    assert (rec.hook, rec.pid, rec.tid, rec.selector, rec.action, rec.ret) == (2, 10, 11, 1, 3, -9)
    assert rec.values[:2] == [b"/etc/x", struct.pack("<q", 5)]
