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


def test_buffer_longer_than_copied_is_truncated_bytes_arg():
    from tetrad.policy.events import PolicyEvents, PolicyRecord
    from tetrad.policy.model import Arg, Hook, Policy
    hook = Hook(kind="kprobe", name="sys_write", path="spec.kprobes[0]", syscall=True,
                args=(Arg(0, "int"), Arg(1, "char_buf", size_arg_index=3), Arg(2, "size_t")))
    policy = Policy(name="p", kind="TracingPolicy", file="p.yaml", document=0, spec={}, hooks=[hook])

    class Cache:
        def find(self, pid):
            return None

    class Builder:
        node_name = "n"

        class clock:
            @staticmethod
            def to_wall_ns(ns):
                return ns

    events = PolicyEvents(policy, Builder(), Cache())
    rec = PolicyRecord(0, 0, 1, 1, 0, 1, 1, 0, [struct.pack("<q", 1), b"a" * 4096, struct.pack("<Q", 10000),
                                                 b"", b"", b""])
    kind, event = events.build(rec)
    arg = event["process_kprobe"]["args"][1]
    assert arg == {"truncated_bytes_arg": {"orig_size": "10000", "bytes_arg": base64.b64encode(b"a" * 4096).decode()}}
    rec.values[2] = struct.pack("<Q", 4096)
    assert events.build(rec)[1]["process_kprobe"]["args"][1] == {"bytes_arg": base64.b64encode(b"a" * 4096).decode()}
