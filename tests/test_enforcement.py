"""Enforcement through policies, with a real daemon on the real kernel:
prevention where the kernel allows it (cgroup BPF for network calls), what a
SIGKILL from a syscall hook does and does not stop (every row of the table in
the README), monitor mode, refusal of what cannot be honoured, and nothing
left blocked after the daemon stops.

Every policy is scoped to a copy of python at a unique path, so nothing else
on the machine is touched."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from conftest import accepted, tetrad_cmd
from policytools import settle, start_with_policies, status, wait_policies
from tetrad import features

HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n{options}  kprobes:\n"
CONNECT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("connected", flush=True)
except OSError as e:
    print("errno", e.errno, flush=True)   # flushed: a caller not killed in time shows
"""


@pytest.fixture
def scoped_python(tmp_path):
    """A copy of python at a path no other process runs."""
    exe = tmp_path / f"py-{uuid.uuid4().hex[:8]}"
    shutil.copy(os.path.realpath("/usr/bin/python3"), exe)
    os.chmod(tmp_path, 0o755)
    return str(exe)


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    yield srv
    srv.close()




def connect_policy(name, call, exe, port, action="Override", mode=None, addr_index=0, arg_type="sock"):
    # a sockaddr's address is matched with SAddr/SPort in Tetragon's syntax
    a, p = ("SAddr", "SPort") if arg_type == "sockaddr" else ("DAddr", "DPort")
    options = f"  options:\n  - name: policy-mode\n    value: {mode}\n" if mode else ""
    act = "- action: Override\n        argError: -1" if action == "Override" else f"- action: {action}"
    return (HEAD.format(name=name, options=options) +
            f"  - call: {call}\n    syscall: {'true' if call.startswith('sys_') else 'false'}\n"
            f"    message: \"no connections to {port}\"\n"
            f"    args:\n    - index: {addr_index}\n      type: {arg_type}\n"
            f"    selectors:\n"
            f"    - matchBinaries:\n      - operator: In\n        values: [\"{exe}\"]\n"
            f"      matchArgs:\n      - index: {addr_index}\n        operator: {a}\n        values: [\"127.0.0.1/32\"]\n"
            f"      - index: {addr_index}\n        operator: {p}\n        values: [\"{port}\"]\n"
            f"      matchActions:\n      {act}\n")


def run(exe, *args, code=CONNECT):
    p = subprocess.run([exe, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout.strip()


def verdicts(d, pid=None):
    return [e["process_kprobe"] for e in d.events() if "process_kprobe" in e
            and e["process_kprobe"].get("action") in ("KPROBE_ACTION_OVERRIDE", "KPROBE_ACTION_SIGKILL")
            and (pid is None or e["process_kprobe"]["process"]["pid"] == pid)]


def test_denied_connect_never_reaches_the_listener(tmp_path, scoped_python, listener):
    port = listener.getsockname()[1]
    d = start_with_policies(tmp_path / "d", {"deny.yaml": connect_policy("deny-connect", "tcp_connect",
                                                                         scoped_python, port)})
    try:
        pol = status(d)["policies"][0]
        assert pol["state"] == "loaded", pol
        assert [h["backend"] for h in pol["hooks"]] == ["cgroup-bpf"]
        assert "refused with EPERM before the call" in pol["hooks"][0]["note"]
        assert run(scoped_python, port) == (0, f"errno {errno.EPERM}")
        assert run("/usr/bin/python3", port) == (0, "connected")      # not the scoped binary
        time.sleep(0.2)
        assert accepted(listener) == 1
        (v,) = d.wait_for(lambda evs: verdicts(d), what="the refusal event")
        assert v["policy_name"] == "deny-connect" and v["function_name"] == "tcp_connect"
        assert v["process"]["binary"] == scoped_python
        assert v["args"] == [{"sock_arg": {"family": "AF_INET", "type": "SOCK_STREAM",
                                            "protocol": "IPPROTO_TCP", "daddr": "127.0.0.1", "dport": port}}]
        assert v["return"] == {"int_arg": -errno.EPERM}
        # set-mode monitor: the same connect goes through and is reported
        subprocess.run(tetrad_cmd() + ["tracingpolicy", "set-mode", "deny-connect", "monitor",
                                       f"--server-address=unix://{d.sock}"], check=True)
        wait_policies(d, 1, pred=lambda ps: ps[0].get("mode") == "monitor" and ps[0]["state"] == "loaded")
        assert run(scoped_python, port) == (0, "connected")
        time.sleep(0.2)
        assert accepted(listener) == 1
        monitored = d.wait_for(lambda evs: [v for v in verdicts(d) if "monitor mode" in v.get("message", "")],
                               what="the monitor-mode event")
        assert monitored[0]["action"] == "KPROBE_ACTION_OVERRIDE" and "return" not in monitored[0]
    finally:
        assert d.stop() == 0
    # fail-open: after the daemon stops nothing stays blocked
    assert run(scoped_python, port) == (0, "connected")


def test_monitor_mode_from_the_policy_and_sigkill_on_sys_connect(tmp_path, scoped_python, listener):
    port = listener.getsockname()[1]
    other = scoped_python + "-2"
    shutil.copy(scoped_python, other)
    d = start_with_policies(tmp_path / "d", {
        "kill.yaml": connect_policy("kill-connect", "sys_connect", scoped_python, port, action="Sigkill",
                                    addr_index=1, arg_type="sockaddr"),
        "watch.yaml": connect_policy("watch-connect", "sys_connect", other, port, mode="monitor",
                                     addr_index=1, arg_type="sockaddr"),
    })
    try:
        assert {p["name"]: p["state"] for p in status(d)["policies"]} == {
            "kill-connect": "loaded", "watch-connect": "loaded"}
        rc, out = run(scoped_python, port)
        assert (rc, out) == (-9, "")      # refused, and killed as connect() returned: no print
        assert run(other, port) == (0, "connected")                     # monitor: allowed
        time.sleep(0.2)
        assert accepted(listener) == 1
        evs = d.wait_for(lambda _: len(verdicts(d)) >= 2 and verdicts(d), what="both verdicts")
        by_policy = {v["policy_name"]: v for v in evs}
        assert by_policy["kill-connect"]["action"] == "KPROBE_ACTION_SIGKILL"
        assert by_policy["kill-connect"]["args"][0]["sockaddr_arg"] == {
            "family": "AF_INET", "addr": "127.0.0.1", "port": port}
        assert "monitor mode" in by_policy["watch-connect"]["message"]
    finally:
        d.stop()


def test_override_the_kernel_cannot_honour_is_rejected_with_the_reason(tmp_path):
    """sys_write has no BPF LSM equivalent: without bpf_override_return (neither this
    kernel nor Debian's has it) the policy is refused, naming both mechanisms."""
    text = (HEAD.format(name="block-write", options="") +
            "  - call: sys_write\n    syscall: true\n    args:\n    - index: 0\n      type: int\n"
            "    selectors:\n    - matchActions:\n      - action: Override\n        argError: -1\n")
    d = start_with_policies(tmp_path / "d", {"block.yaml": text})
    try:
        (pol,) = status(d)["policies"]
        assert pol["state"] == "error"
        feats = features.detect()   # loads probe programs: what this kernel offers decides the reason
        assert ("Override on 'sys_write' cannot be honoured here: no override_return: "
                + feats.notes["override_return"]) in pol["error"], pol
        assert "no bpf_lsm: no BPF LSM hook stands in for sys_write" in pol["error"], pol
    finally:
        d.stop()


def test_enforcing_selector_cgroup_bpf_cannot_decide_is_rejected(tmp_path, scoped_python):
    text = connect_policy("bad", "tcp_connect", scoped_python, 80).replace("operator: DAddr", "operator: SAddr")
    d = start_with_policies(tmp_path / "d", {"bad.yaml": text})
    try:
        (pol,) = status(d)["policies"]
        assert pol["state"] == "error" and "SAddr cannot be decided before the call" in pol["error"]
    finally:
        d.stop()


# -- what a SIGKILL from a syscall-entry hook stops (README table) -------------

def sigkill_policy(name, call, exe, index=0, arg_type="int", prefix=None):
    match = (f"      matchArgs:\n      - index: {index}\n        operator: Prefix\n        values: [\"{prefix}\"]\n"
             if prefix else "")
    return (HEAD.format(name=name, options="") +
            f"  - call: {call}\n    syscall: true\n    args:\n    - index: {index}\n      type: {arg_type}\n"
            f"    selectors:\n    - matchBinaries:\n      - operator: In\n        values: [\"{exe}\"]\n"
            f"{match}      matchActions:\n      - action: Sigkill\n")


@pytest.fixture
def killer(tmp_path, scoped_python):
    calls = {"exec": "sys_execve", "write": "sys_write", "creat": "sys_openat", "unlink": "sys_unlink"}
    # openat: only of our work directory (python opens its modules at start-up)
    creat = {"index": 1, "arg_type": "string", "prefix": str(tmp_path / "w")}
    d = start_with_policies(tmp_path / "d", {
        f"{k}.yaml": sigkill_policy(f"kill-{k}", call, scoped_python + "-" + k, **(creat if k == "creat" else {}))
        for k, call in calls.items()})
    assert all(p["state"] == "loaded" for p in status(d)["policies"]), status(d)["policies"]
    for k in calls:
        shutil.copy(scoped_python, scoped_python + "-" + k)
    yield d, scoped_python
    d.stop()


def test_sigkill_table(killer, tmp_path):
    d, exe = killer
    work = tmp_path / "w"
    work.mkdir()
    # execve: killed, and the new program never runs
    marker = work / "exec-ran"
    rc, _ = run(exe + "-exec", code=f"import os; os.execv('/bin/sh', ['sh', '-c', 'touch {marker}'])")
    assert rc == -9 and not marker.exists()
    # write to a regular file: killed, nothing written
    target = work / "file"
    target.write_text("")
    rc, _ = run(exe + "-write", code=f"import os; fd = os.open('{target}', os.O_WRONLY); os.write(fd, b'x' * 10)")
    assert rc == -9 and target.read_bytes() == b""
    # write to a pipe: killed, but the bytes are delivered
    r, w = os.pipe()
    p = subprocess.Popen([exe + "-write", "-c", f"import os; os.write({w}, b'delivered')"], pass_fds=(w,))
    assert p.wait(30) == -9
    os.close(w)
    assert os.read(r, 100) == b"delivered"
    os.close(r)
    # openat(O_CREAT): killed, but the file is created
    created = work / "created"
    rc, _ = run(exe + "-creat", code=f"open('{created}', 'w')")
    assert rc == -9 and created.exists()
    # unlink: killed, but the file is gone
    doomed = work / "doomed"
    doomed.write_text("x")
    rc, _ = run(exe + "-unlink", code=f"import os; os.unlink('{doomed}')")
    assert rc == -9 and not doomed.exists()
    # connect: see the cgroup tests above (a kill from a connect hook comes after the peer accepted)
    kills = [e for e in settle(d) if e.get("process_kprobe", {}).get("action") == "KPROBE_ACTION_SIGKILL"]
    assert {e["process_kprobe"]["policy_name"] for e in kills} >= {"kill-exec", "kill-write", "kill-creat",
                                                                  "kill-unlink"}


# -- socket creation by family/type through the daemon (cgroup sock_create) ---

SOCKETS = r"""
import socket, sys
for fam, typ in ((socket.AF_INET6, socket.SOCK_DGRAM), (socket.AF_INET6, socket.SOCK_STREAM),
                 (socket.AF_INET, socket.SOCK_DGRAM)):
    try:
        socket.socket(fam, typ).close()
        print("ok", end=" ", flush=True)
    except OSError as e:
        print("errno", e.errno, end=" ", flush=True)
"""


def socket_policy(name, call, exe, matches, action="Override"):
    act = "- action: Override\n        argError: -1" if action == "Override" else f"- action: {action}"
    args = "".join(f"      - index: {i}\n        operator: Equal\n        values: [\"{v}\"]\n" for i, v in matches)
    return (HEAD.format(name=name, options="") +
            f"  - call: {call}\n    syscall: {'true' if call.startswith('sys_') else 'false'}\n"
            f"    args:\n    - index: 0\n      type: int\n    - index: 1\n      type: int\n"
            f"    - index: 2\n      type: int\n"
            f"    selectors:\n    - matchBinaries:\n      - operator: In\n        values: [\"{exe}\"]\n"
            f"      matchArgs:\n{args}      matchActions:\n      {act}\n")


def test_socket_creation_by_family_and_type_is_refused_through_the_daemon(tmp_path, scoped_python):
    killed = scoped_python + "-kill"
    shutil.copy(scoped_python, killed)
    d = start_with_policies(tmp_path / "d", {
        "udp6.yaml": socket_policy("no-udp6", "sys_socket", scoped_python, [(0, "10"), (1, "2")]),
        "kill.yaml": socket_policy("kill-udp4", "security_socket_create", killed, [(0, "2"), (1, "2")],
                                   action="Sigkill"),
        "unix.yaml": socket_policy("no-unix", "sys_socket", scoped_python, [(0, "1")]),
        "any.yaml": socket_policy("no-family", "sys_socket", scoped_python, [(1, "2")]),
    })
    try:
        pols = {p["name"]: p for p in status(d)["policies"]}
        assert pols["no-udp6"]["state"] == "loaded" and pols["kill-udp4"]["state"] == "loaded", pols
        assert [h["attach"] for h in pols["no-udp6"]["hooks"]] == [["cgroup sock_create"]]
        # the kernel runs sock_create programs for internet sockets only: refused, with the reason
        assert "AF_INET and AF_INET6 only" in pols["no-unix"]["error"]
        assert "AF_INET and AF_INET6 only" in pols["no-family"]["error"]

        assert run(scoped_python, code=SOCKETS) == (0, f"errno {errno.EPERM} ok ok")
        assert run("/usr/bin/python3", code=SOCKETS) == (0, "ok ok ok")   # not the scoped binary
        # Sigkill: the two sockets before it are made, the third refused and the caller killed
        assert run(killed, code=SOCKETS) == (-9, "ok ok")
        evs = d.wait_for(lambda _: len({v["policy_name"] for v in verdicts(d)}) == 2 and verdicts(d),
                         what="both socket verdicts")
        by_policy = {v["policy_name"]: v for v in evs}
        deny, kill = by_policy["no-udp6"], by_policy["kill-udp4"]
        assert deny["action"] == "KPROBE_ACTION_OVERRIDE" and deny["function_name"] == "sys_socket"
        assert deny["args"][:2] == [{"int_arg": socket.AF_INET6}, {"int_arg": socket.SOCK_DGRAM}]
        assert deny["return"] == {"int_arg": -errno.EPERM} and deny["process"]["binary"] == scoped_python
        assert kill["action"] == "KPROBE_ACTION_SIGKILL" and kill["function_name"] == "security_socket_create"
        assert kill["args"][:2] == [{"int_arg": socket.AF_INET}, {"int_arg": socket.SOCK_DGRAM}]
    finally:
        assert d.stop() == 0
    assert run(scoped_python, code=SOCKETS) == (0, "ok ok ok")     # nothing stays refused


def test_monitor_mode_on_a_tracing_hook_reports_the_kill_it_does_not_do(tmp_path, scoped_python):
    """Not a network call: the policy's own program runs the selector, and monitor mode
    turns its Sigkill into a report that names it."""
    text = sigkill_policy("watch-unlink", "sys_unlink", scoped_python).replace(
        "spec:\n", "spec:\n  options:\n  - name: policy-mode\n    value: monitor\n", 1)
    d = start_with_policies(tmp_path / "d", {"watch.yaml": text})
    try:
        doomed = tmp_path / "doomed"
        doomed.write_text("x")
        rc, _ = run(scoped_python, code=f"import os; os.unlink('{doomed}')")
        assert rc == 0 and not doomed.exists()
        [ev] = d.wait_for(lambda evs: verdicts(d), what="the monitor-mode event")
        assert ev["policy_name"] == "watch-unlink" and ev["action"] == "KPROBE_ACTION_SIGKILL"
        assert ev["message"] == "monitor mode: not enforced"
    finally:
        d.stop()
