"""Talking to the daemon's unix socket (see protocol.py)."""

from __future__ import annotations

import json
import socket

from . import protocol


class ApiError(Exception):
    """The daemon cannot be reached, or it refused the request."""


def connect(address: str, timeout: float | None = 5.0) -> socket.socket:
    path = protocol.parse_address(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except PermissionError:
        sock.close()
        raise ApiError(f"permission denied on {path}: run as root or as a member of "
                       f"group tetrad") from None
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ApiError(f"cannot connect to {path}: is the daemon running? "
                       f"(systemctl status tetrad; --server-address to use another socket)") from None
    except OSError as e:
        sock.close()
        raise ApiError(f"cannot connect to {path}: {e.strerror or e}") from None
    return sock


def _send(sock: socket.socket, op: str, args: dict | None) -> None:
    sock.sendall(protocol.encode({"op": op, "args": args or {}}))


def _reply(line: bytes):
    if not line:
        raise ApiError("the daemon closed the connection without replying")
    msg = json.loads(line)
    if not msg.get("ok"):
        raise ApiError(msg.get("error", "request failed"))
    return msg.get("result")


def call(address: str, op: str, args: dict | None = None, timeout: float = 30.0):
    """Send one command and return its result (ApiError on failure)."""
    with connect(address, timeout) as sock:
        _send(sock, op, args)
        with sock.makefile("rb") as f:
            try:
                return _reply(f.readline())
            except TimeoutError:
                raise ApiError(f"no reply from the daemon within {timeout:.0f}s") from None


def stream_events(address: str, args: dict):
    """Yield event lines (str, without newline) from the daemon; notices
    included (key protocol.NOTICE_KEY).  Ends when the daemon closes."""
    sock = connect(address)
    sock.settimeout(None)
    try:
        _send(sock, "getevents", args)
        with sock.makefile("rb") as f:
            _reply(f.readline())
            for raw in f:
                yield raw.decode("utf-8", "replace").rstrip("\n")
    finally:
        sock.close()
