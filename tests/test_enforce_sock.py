"""Network prevention through cgroup BPF, on the real kernel: a refused
connect never reaches the listener, and nothing stays blocked afterwards.

Rules are scoped to processes these tests start (by pid or by a binary at a
unique path), or to a port nothing else uses, so the host is unaffected."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import accepted
from tetrad import offsets
from tetrad.btf import Btf
from tetrad.enforce.sock import (ACTION_DENY, ACTION_MONITOR, HOOK_CONNECT, HOOK_SENDMSG,
                                 HOOK_SOCK_CREATE, RuleError, SockEnforcer, SockRule)
from tetrad.features import detect

CONNECT = r"""
import socket, sys, os
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as e:
    print("errno", e.errno)
"""


@pytest.fixture(scope="module")
def enforcer():
    e = SockEnforcer(detect(quick=True).cgroup_v2_root, offsets.resolve(Btf.load()))
    yield e
    e.close()


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)   # dual stack: v4 and v4-mapped
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen(16)
    srv.setblocking(False)
    yield srv
    srv.close()




def run_connect(addr, port, exe=sys.executable):
    """A child that connects once; returns ("connected" | "errno N", its pid)."""
    p = subprocess.run([exe, "-c", CONNECT, addr, str(port)], capture_output=True, text=True, timeout=30)
    return p.stdout.strip()


def paused_child(addr, port):
    """A child that connects when its stdin gets a line, so a rule can name its pid."""
    code = "import sys; sys.stdin.readline()\n" + CONNECT
    return subprocess.Popen([sys.executable, "-c", code, addr, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def release(child) -> str:
    out, _ = child.communicate("go\n", timeout=30)
    return out.strip()


def test_denied_connect_never_reaches_the_listener(enforcer, listener):
    port = listener.getsockname()[1]
    child = paused_child("127.0.0.1", port)
    enforcer.set_rule(0, SockRule(action=ACTION_DENY, hooks=HOOK_CONNECT, cidrs=["127.0.0.1/32"],
                                  ports=[(port, port)], pids={child.pid}))
    try:
        assert release(child) == f"errno {errno.EPERM}"
        time.sleep(0.2)
        assert accepted(listener) == 0
        (v,) = [v for v in enforcer.poll(100) if v.pid == child.pid]
        assert (v.hook, v.action, v.daddr, v.dport) == ("connect", ACTION_DENY, "127.0.0.1", port)
        # the same connect from an unscoped process goes through
        assert run_connect("127.0.0.1", port) == "connected"
        assert accepted(listener) == 1
    finally:
        enforcer.clear_rule(0)


def test_v4_mapped_ipv6_is_judged_as_ipv4(enforcer, listener):
    port = listener.getsockname()[1]
    child = paused_child("::ffff:127.0.0.1", port)
    enforcer.set_rule(0, SockRule(hooks=HOOK_CONNECT, cidrs=["127.0.0.0/8"], pids={child.pid}))
    try:
        assert release(child) == f"errno {errno.EPERM}"
        assert accepted(listener) == 0
    finally:
        enforcer.clear_rule(0)


def test_binary_scope_is_decided_at_exec(enforcer, listener, tmp_path):
    port = listener.getsockname()[1]
    exe = tmp_path / "scoped-python3"
    shutil.copy(os.path.realpath(sys.executable), exe)
    enforcer.set_rule(1, SockRule(hooks=HOOK_CONNECT, ports=[(port, port)], binaries={str(exe)}))
    try:
        assert run_connect("127.0.0.1", port, str(exe)) == f"errno {errno.EPERM}"
        assert run_connect("127.0.0.1", port) == "connected"   # same program, other path
        assert accepted(listener) == 1
    finally:
        enforcer.clear_rule(1)


def test_not_daddr_allows_only_the_listed_network(enforcer, listener):
    port = listener.getsockname()[1]
    allowed = paused_child("127.0.0.1", port)
    denied = paused_child("127.0.0.2", port)
    enforcer.set_rule(2, SockRule(hooks=HOOK_CONNECT, cidrs=["127.0.0.1/32"], cidrs_negate=True,
                                  pids={allowed.pid, denied.pid}))
    try:
        assert release(allowed) == "connected"
        assert release(denied) == f"errno {errno.EPERM}"
    finally:
        enforcer.clear_rule(2)


def test_monitor_reports_and_allows(enforcer, listener):
    port = listener.getsockname()[1]
    child = paused_child("127.0.0.1", port)
    enforcer.set_rule(3, SockRule(action=ACTION_MONITOR, hooks=HOOK_CONNECT, pids={child.pid}))
    try:
        assert release(child) == "connected"
        verdicts = [v for v in enforcer.poll(100) if v.pid == child.pid]
        assert verdicts and verdicts[0].action == ACTION_MONITOR
    finally:
        enforcer.clear_rule(3)


def test_udp_sendmsg_denied(enforcer):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.5)
    port = rx.getsockname()[1]
    code = ("import socket,sys; sys.stdin.readline(); s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"try:\n s.sendto(b'x', ('127.0.0.1', {port})); print('sent')\n"
            "except OSError as e: print('errno', e.errno)")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    enforcer.set_rule(4, SockRule(hooks=HOOK_SENDMSG, protocols={socket.IPPROTO_UDP}, pids={child.pid}))
    try:
        assert release(child) == f"errno {errno.EPERM}"
        with pytest.raises(socket.timeout):
            rx.recv(10)
    finally:
        enforcer.clear_rule(4)
        rx.close()


def test_socket_creation_denied_by_family_and_type(enforcer):
    code = ("import socket,sys; sys.stdin.readline()\n"
            "for fam, typ in ((socket.AF_INET6, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_STREAM)):\n"
            "  try: socket.socket(fam, typ).close(); print('ok', end=' ')\n"
            "  except OSError as e: print('errno', e.errno, end=' ')")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    enforcer.set_rule(5, SockRule(hooks=HOOK_SOCK_CREATE, families={socket.AF_INET6},
                                  types={socket.SOCK_DGRAM}, pids={child.pid}))
    try:
        assert release(child) == f"errno {errno.EPERM} ok"
    finally:
        enforcer.clear_rule(5)


def test_the_daemon_itself_is_never_blocked(enforcer, listener):
    port = listener.getsockname()[1]
    # unscoped: every process but tetrad (this process is the enforcer's owner)
    enforcer.set_rule(6, SockRule(hooks=HOOK_CONNECT, cidrs=["127.0.0.1/32"], ports=[(port, port)]))
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.close()
        assert run_connect("127.0.0.1", port) == f"errno {errno.EPERM}"
    finally:
        enforcer.clear_rule(6)


def test_the_last_slot_is_judged_and_clearing_one_rule_keeps_the_others(enforcer, listener):
    port = listener.getsockname()[1]
    enforcer.set_rule(2, SockRule(hooks=HOOK_CONNECT, ports=[(port, port)]))
    enforcer.set_rule(15, SockRule(hooks=HOOK_CONNECT, ports=[(port + 1, port + 1)]))
    try:
        assert run_connect("127.0.0.1", port + 1) == f"errno {errno.EPERM}"
        enforcer.clear_rule(15)
        assert run_connect("127.0.0.1", port) == f"errno {errno.EPERM}"
        enforcer.clear_rule(2)
        assert run_connect("127.0.0.1", port) == "connected"
    finally:
        enforcer.clear_rule(15)
        enforcer.clear_rule(2)


def test_nothing_stays_blocked_after_close(listener):
    port = listener.getsockname()[1]
    e = SockEnforcer(detect(quick=True).cgroup_v2_root, offsets.resolve(Btf.load()))
    e.set_rule(0, SockRule(hooks=HOOK_CONNECT, ports=[(port, port)]))
    assert run_connect("127.0.0.1", port) == f"errno {errno.EPERM}"
    e.close()
    assert run_connect("127.0.0.1", port) == "connected"


def test_bad_rules_are_errors():
    with pytest.raises(RuleError):
        SockRule(cidrs=["300.1.1.1/8"]).to_struct()
    with pytest.raises(RuleError):
        SockRule(ports=[(10, 5)]).to_struct()
    with pytest.raises(RuleError):
        SockRule(cidrs=["10.0.0.0/8"] * 9).to_struct()
