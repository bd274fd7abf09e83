"""Signal (argSig) and Sigkill on every hook kind this kernel serves, with a
real daemon: `tracepoints:` hooks, `uprobes:` hooks, and `kprobes:` hooks
served by tracepoint equivalents (fd_install, security_file_open,
tcp_connect).  Each time the signal reaches the process that made the call
and no other (not its parent, which runs the same binary), and the event
carries the action.  The daemon itself is never signalled, even by a
selector that names it; a connect hook's SIGKILL from a tracepoint comes
after the peer accepted (the README's table), which the cgroup path prevents.

Every policy is scoped to a copy of python at a unique path."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from conftest import accepted
from policytools import start_with_policies, status, wait_policies

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
SIGUSR1 = 10

# The parent forks; the child makes the call (argv[1]) and waits briefly for a
# SIGUSR1; the parent, same binary, reports whether it got one and how the
# child ended.  Output is flushed at once, so a process that ran on shows.
FAMILY = r"""
import os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
pid = os.fork()
if pid == 0:
    try:
        exec(sys.argv[1])
    except OSError:
        pass
    for _ in range(100):
        if got:
            break
        time.sleep(0.01)
    print("child", "got" if got else "none", flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
time.sleep(0.1)
print("parent", "got" if got else "none", os.waitstatus_to_exitcode(status), pid, flush=True)
"""


def policy(name: str, body: str) -> str:
    return f"apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n{body}"


def selector(exe: str, action: str, match: str = "") -> str:
    act = f"- action: Signal\n        argSig: {SIGUSR1}" if action == "Signal" else "- action: Sigkill"
    return (f"    - matchBinaries:\n      - operator: In\n        values: [\"{exe}\"]\n{match}"
            f"      matchActions:\n      {act}\n")


def match(index: int, op: str, value) -> str:
    return f"      matchArgs:\n      - index: {index}\n        operator: {op}\n        values: [\"{value}\"]\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signals")
    os.chmod(tmp, 0o755)
    exe = str(tmp / f"py-{uuid.uuid4().hex[:8]}")
    shutil.copy(os.path.realpath("/usr/bin/python3"), exe)
    files = {k: tmp / k for k in ("fd-signal", "open-kill")}
    for f in files.values():
        f.write_text("")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    tp = lambda event, args, sels: (f"  - subsystem: syscalls\n    event: {event}\n    args:\n{args}"
                                   f"    selectors:\n{sels}")
    policies = {
        # tracepoints: sys_enter_getpgid's pid field (format index 5)
        "tp.yaml": policy("tp-actions", "  tracepoints:\n" + tp(
            "sys_enter_getpgid", "    - index: 5\n      type: int\n",
            selector(exe, "Signal", match(0, "Equal", 7101)) + selector(exe, "Sigkill", match(0, "Equal", 7102)))
            # connect: a SIGKILL from the tracepoint at connect's entry
            + tp("sys_enter_connect", "    - index: 5\n      type: int\n",
                 selector(exe + "-connect", "Sigkill"))),
        "up.yaml": policy("up-actions", "  uprobes:\n"
                          f"  - path: \"{LIBC}\"\n    symbols: [getppid]\n    selectors:\n" + selector(exe, "Signal") +
                          f"  - path: \"{LIBC}\"\n    symbols: [getpgrp]\n    selectors:\n" + selector(exe, "Sigkill")),
        "kp.yaml": policy("kp-actions", "  kprobes:\n"
                          "  - call: fd_install\n    syscall: false\n    args:\n    - index: 0\n      type: int\n"
                          "    - index: 1\n      type: file\n    selectors:\n"
                          + selector(exe, "Signal", match(1, "Equal", files["fd-signal"])) +
                          "  - call: security_file_open\n    syscall: false\n    args:\n    - index: 0\n      type: file\n"
                          "    selectors:\n" + selector(exe, "Sigkill", match(0, "Equal", files["open-kill"])) +
                          "  - call: tcp_connect\n    syscall: false\n    args:\n    - index: 0\n      type: sock\n"
                          "    selectors:\n" + selector(exe, "Signal", match(0, "DPort", port))),
    }
    shutil.copy(exe, exe + "-connect")
    d = start_with_policies(tmp / "d", policies)
    yield d, exe, files, srv
    d.stop()
    srv.close()


def family(exe: str, trigger: str):
    p = subprocess.run([exe, "-c", FAMILY, trigger], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split("\n")
    parent = lines[-2].split()
    return lines[:-2], parent[1], int(parent[2]), int(parent[3])   # child lines, parent got, child exit, child pid


def action_of(d, kind: str, pid: int, policy_name: str) -> str:
    found = d.wait_for(lambda evs: [e[kind] for e in evs if kind in e and e[kind]["process"]["pid"] == pid
                                    and e[kind].get("policy_name") == policy_name],
                       what=f"{kind} of {pid}")
    return found[0]["action"]


def test_all_loaded_on_their_backends(env):
    d, *_ = env
    pols = {p["name"]: p for p in status(d)["policies"]}
    assert all(p["state"] == "loaded" for p in pols.values()), pols
    assert {h["backend"] for h in pols["kp-actions"]["hooks"]} == {"tracepoint-equivalent"}, pols["kp-actions"]
    assert {h["backend"] for h in pols["up-actions"]["hooks"]} == {"uprobe"}


@pytest.mark.parametrize("kind,policy_name,trigger", [
    ("process_tracepoint", "tp-actions", "os.getpgid(7101)"),
    ("process_uprobe", "up-actions", "os.getppid()"),
    ("process_kprobe", "kp-actions", "open({fd_signal!r}).close()"),
    ("process_kprobe", "kp-actions", "import socket; socket.create_connection(('127.0.0.1', {port})).close()"),
])
def test_signal_reaches_the_caller_only(env, kind, policy_name, trigger):
    d, exe, files, srv = env
    trigger = trigger.format(fd_signal=str(files["fd-signal"]), port=srv.getsockname()[1])
    child, parent_got, child_exit, child_pid = family(exe, trigger)
    assert (child, parent_got, child_exit) == (["child got"], "none", 0)
    assert action_of(d, kind, child_pid, policy_name) == "KPROBE_ACTION_SIGNAL"


@pytest.mark.parametrize("kind,policy_name,trigger", [
    ("process_tracepoint", "tp-actions", "os.getpgid(7102)"),
    ("process_uprobe", "up-actions", "os.getpgrp()"),
    ("process_kprobe", "kp-actions", "open({open_kill!r}).close()"),
])
def test_sigkill_kills_the_caller_only(env, kind, policy_name, trigger):
    d, exe, files, _ = env
    child, parent_got, child_exit, child_pid = family(exe, trigger.format(open_kill=str(files["open-kill"])))
    assert (child, parent_got, child_exit) == ([], "none", -9)
    assert action_of(d, kind, child_pid, policy_name) == "KPROBE_ACTION_SIGKILL"


def test_sigkill_at_connect_entry_comes_after_the_peer_accepted(env):
    """KERNEL.md's connect row: killed, yet the listener accepts the connection.
    (A `kprobes:` sys_connect/tcp_connect Sigkill becomes a cgroup rule that
    refuses the connect first: tests/test_enforcement.py.)"""
    d, exe, _, _ = env
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    try:
        code = (f"import socket; socket.create_connection(('127.0.0.1', {srv.getsockname()[1]})); "
                "print('ran on', flush=True)")
        p = subprocess.Popen([exe + "-connect", "-c", code], stdout=subprocess.PIPE, text=True)
        out, _ = p.communicate(timeout=30)
        assert (p.returncode, out) == (-9, "")
        time.sleep(0.2)
        assert accepted(srv) == 1
        assert action_of(d, "process_tracepoint", p.pid, "tp-actions") == "KPROBE_ACTION_SIGKILL"
    finally:
        srv.close()


def test_the_daemon_is_never_signalled_even_when_a_selector_names_it(tmp_path):
    """Sigkill on the daemon's own epoll calls, scoped to its pid and to a
    helper's: the helper dies (the selector works), the daemon runs on."""
    d = start_with_policies(tmp_path / "d", {})
    helper = subprocess.Popen([sys.executable, "-c", "import select, sys; sys.stdin.readline(); "
                               "select.epoll().poll(0.05); print('ran on', flush=True)"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = f"[{d.proc.pid}, {helper.pid}]"
        hooks = "".join(f"  - call: {call}\n    syscall: true\n    selectors:\n"
                        f"    - matchPIDs:\n      - operator: In\n        values: {pids}\n"
                        f"      matchActions:\n      - action: Sigkill\n"
                        for call in ("sys_epoll_wait", "sys_epoll_pwait"))
        (d.policy_dir / "self.yaml").write_text(policy("kill-self", "  kprobes:\n" + hooks))
        wait_policies(d, 1, pred=lambda ps: ps[0]["state"] == "loaded")
        out, _ = helper.communicate("go\n", timeout=30)
        assert (helper.returncode, out) == (-9, "")
        time.sleep(2)   # the daemon polls its epoll many times a second
        assert d.proc.poll() is None, d.log_text()[-2000:]
        assert status(d)["policies"][0]["state"] == "loaded"
    finally:
        helper.kill()
        assert d.stop() == 0
