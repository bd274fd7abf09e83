"""Override on syscalls, enforced by their BPF LSM equivalents.

bpf_override_return does not exist on Debian's kernels (no error injection), so
an Override on `sys_openat`, `sys_unlink` or `sys_execve` is enforced by BPF LSM
programs on path_mknod + file_open, path_unlink and bprm_creds_for_exec, which
run the policy's own selectors on the path (or filename) the kernel is about to
act on (tetrad/policy/overrides.py).  In the kernel lane's Debian guest: the
open fails and the file is neither created nor read, the file is not removed,
the program never runs; each is a process_kprobe event of the hook as written
with KPROBE_ACTION_OVERRIDE; monitor mode lets each through and reports it;
nothing stays denied once the daemon stops; neither Override nor Sigkill acts on
PID 1 (made to open matching paths itself: tests/pid1.py).  On a kernel with neither
mechanism (the development machines) the policy is refused, naming both.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

import pid1
from conftest import SHARED_DAEMON, accepted, tetrad_cmd
from policytools import start_with_policies, status, wait_policies
from tetrad import backends
from tetrad import features as features_mod
from tetrad.policy import hooks, loader, manager

FEATURES = features_mod.detect()
# In the kernel lane's guest PID 1 is our own init, which the PID 1 check may drive; on any
# other machine PID 1 is not ours to touch.
IN_LANE = SHARED_DAEMON


def override_policy(name: str, deny: str, kill: str = "/never/", port: int = 1) -> str:
    """One policy, three syscalls on BPF LSM (one compile: ~17 s under the lane's
    emulation) and connect() to 127.0.0.1:`port` (cgroup BPF); opening a path under
    `kill` is killed instead."""
    def kprobe(call: str, index: int) -> str:
        return f"""  - call: "{call}"
    syscall: true
    message: "{call} denied"
    args:
    - index: {index}
      type: "string"
    selectors:
    - matchArgs:
      - index: {index}
        operator: "Prefix"
        values: ["{deny}"]
      matchActions:
      - action: Override
        argError: -1
""" + ("" if call != "sys_openat" else f"""    - matchArgs:
      - index: {index}
        operator: "Prefix"
        values: ["{kill}"]
      matchActions:
      - action: Sigkill
""")
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
{kprobe("sys_openat", 1)}{kprobe("sys_unlink", 0)}{kprobe("sys_execve", 0)}  - call: "sys_connect"
    syscall: true
    message: "sys_connect denied"
    args:
    - index: 1
      type: "sockaddr"
    selectors:
    - matchArgs:
      - index: 1
        operator: "SAddr"
        values: ["127.0.0.1/32"]
      - index: 1
        operator: "SPort"
        values: ["{port}"]
      matchActions:
      - action: Override
        argError: -1
"""


def events_of(d, call: str, path: str, pid: int | None = None) -> list[dict]:
    return [e["process_kprobe"] for e in d.events() if "process_kprobe" in e
            and e["process_kprobe"]["function_name"] == call
            and e["process_kprobe"]["args"][0]["string_arg"] == path
            and (pid is None or e["process_kprobe"]["process"]["pid"] == pid)]


def connects(d, pid: int) -> list[dict]:
    return [e["process_kprobe"] for e in d.events() if "process_kprobe" in e
            and e["process_kprobe"]["function_name"] == "sys_connect"
            and e["process_kprobe"]["process"]["pid"] == pid]


@pytest.fixture
def tree(tmp_path):
    """deny/ and other/, each with a file `f` and a program `prog` that writes a marker."""
    out = {}
    for name in ("deny", "other", "kill"):
        d = tmp_path / "files" / name
        d.mkdir(parents=True)
        (d / "f").write_text(f"secret of {name}")
        prog = d / "prog"
        prog.write_text(f"#!/bin/sh\necho ran >{d}/marker\n")
        prog.chmod(0o755)
        out[name] = d
    return out


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    yield srv
    srv.close()


def connect_errno(port: int) -> int:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port))


def open_fails(path, flags=os.O_RDONLY) -> int:
    with pytest.raises(OSError) as exc:
        os.close(os.open(path, flags, 0o644))
    return exc.value.errno


def run_prog(path) -> subprocess.Popen | OSError:
    try:
        p = subprocess.Popen([str(path)])
    except OSError as e:
        return e
    p.wait(60)
    return p


def test_override_on_syscalls_is_enforced_by_bpf_lsm_or_refused(tmp_path, tree, listener):
    deny, other, kill = tree["deny"], tree["other"], tree["kill"]
    port = listener.getsockname()[1]
    d = start_with_policies(tmp_path / "d", {"o.yaml": override_policy("lsm-override", f"{deny}/", f"{kill}/",
                                                                       port)}, timeout=300)
    try:
        [pol] = status(d)["policies"]
        if not (FEATURES.bpf_lsm or FEATURES.override_return):   # this host: refused, naming both
            assert pol["state"] == "error", pol
            assert "Override on 'sys_openat' cannot be honoured here: no override_return: " in pol["error"], pol
            assert f"no bpf_lsm: {FEATURES.notes['bpf_lsm']}" in pol["error"], pol
            os.unlink(deny / "f")   # nothing was loaded to deny it
            assert run_prog(deny / "prog").returncode == 0 and (deny / "marker").exists()
            return
        assert pol["state"] == "loaded", pol
        assert [(h["hook"], h["backend"], h["attach"]) for h in pol["hooks"]] == [
            ("kprobe sys_openat", "bpf-lsm (override)", ["lsm path_mknod", "lsm file_open"]),
            ("kprobe sys_unlink", "bpf-lsm (override)", ["lsm path_unlink"]),
            ("kprobe sys_execve", "bpf-lsm (override)", ["lsm bprm_creds_for_exec"]),
            ("kprobe sys_connect (selector 0)", "cgroup-bpf", ["cgroup connect4, connect6"])], pol
        assert all(h["note"].startswith("Override enforced by lsm:") for h in pol["hooks"][:3]), pol
        listed = subprocess.run(tetrad_cmd() + ["tracingpolicy", "list", f"--server-address=unix://{d.sock}",
                                                "--timeout=300"], capture_output=True, text=True, check=True)
        assert "kprobe sys_openat: bpf-lsm (override) (lsm path_mknod, lsm file_open)" in listed.stdout, listed.stdout

        # open: creating is refused before the file exists; an existing file is not opened,
        # whatever name reaches it (a relative path resolves to the same file)
        assert open_fails(deny / "new", os.O_WRONLY | os.O_CREAT) == errno.EPERM
        assert not (deny / "new").exists()
        assert open_fails(deny / "f") == errno.EPERM
        cwd = os.getcwd()
        os.chdir(deny)
        try:
            assert open_fails("f") == errno.EPERM
        finally:
            os.chdir(cwd)
        assert (other / "f").read_text() == "secret of other"
        os.close(os.open(other / "new", os.O_WRONLY | os.O_CREAT, 0o644))
        # unlink: the file stays
        with pytest.raises(PermissionError):
            os.unlink(deny / "f")
        assert (deny / "f").exists()
        os.unlink(other / "new")
        # execve: the program never runs
        refused = run_prog(deny / "prog")
        assert isinstance(refused, OSError) and refused.errno == errno.EPERM, refused
        assert not (deny / "marker").exists()
        assert run_prog(other / "prog").returncode == 0 and (other / "marker").exists()
        # connect: refused by the cgroup program, the listener never sees it
        assert connect_errno(port) == errno.EPERM
        assert accepted(listener) == 0

        me = os.getpid()
        for call, path in (("sys_openat", f"{deny}/new"), ("sys_openat", f"{deny}/f"),
                           ("sys_unlink", f"{deny}/f")):
            evs = d.wait_for(lambda _: events_of(d, call, path, me), what=f"{call} {path}")
            assert {e["action"] for e in evs} == {"KPROBE_ACTION_OVERRIDE"}, evs
            assert evs[0]["policy_name"] == "lsm-override" and evs[0]["message"] == f"{call} denied"
        # the relative open reports the resolved path: two denied opens of deny/f
        assert len(d.wait_for(lambda _: events_of(d, "sys_openat", f"{deny}/f", me)[1:],
                              what="the relative open")) == 1
        [ev] = d.wait_for(lambda _: events_of(d, "sys_execve", f"{deny}/prog"), what="the denied exec")
        assert ev["action"] == "KPROBE_ACTION_OVERRIDE" and ev["process"]["pid"] != me
        assert events_of(d, "sys_openat", f"{other}/f") == [] and events_of(d, "sys_execve", f"{other}/prog") == []
        [ev] = d.wait_for(lambda _: connects(d, me), what="the denied connect")
        assert ev["action"] == "KPROBE_ACTION_OVERRIDE" and ev["args"][0]["sockaddr_arg"]["port"] == port

        # the Sigkill selector kills another process (the open itself happens: a kill, not an Override) ...
        child = subprocess.run([sys.executable, "-c", f"open('{kill}/by-child', 'w'); print('survived')"],
                               capture_output=True, text=True, timeout=120)
        assert (child.returncode, child.stdout) == (-9, ""), child
        # ... and neither selector acts on PID 1 (in the lane, our own init: tests/pid1.py)
        if IN_LANE:
            for path in (f"{deny}/by-pid1", f"{kill}/by-pid1"):
                assert pid1.openat_in(1, path, os.O_WRONLY | os.O_CREAT) >= 0, path
                assert os.path.exists(path), path
                # creating, then opening: both reported without the action
                evs = d.wait_for(lambda _: events_of(d, "sys_openat", path, 1), what=f"PID 1's open of {path}")
                assert {e["action"] for e in evs} == {"KPROBE_ACTION_POST"}, evs

        # monitor mode: each goes through and is reported as what would have been done
        subprocess.run(tetrad_cmd() + ["tracingpolicy", "set-mode", "lsm-override", "monitor",
                                       f"--server-address=unix://{d.sock}", "--timeout=300"], check=True)
        wait_policies(d, 1, timeout=300,
                      pred=lambda ps: ps[0].get("mode") == "monitor" and ps[0]["state"] == "loaded")
        assert [h["backend"] for h in status(d)["policies"][0]["hooks"]] == ["bpf-lsm (override)"] * 3 + ["cgroup-bpf"]
        os.close(os.open(deny / "new", os.O_WRONLY | os.O_CREAT, 0o644))
        assert (deny / "f").read_text() == "secret of deny"
        os.unlink(deny / "new")
        assert run_prog(deny / "prog").returncode == 0 and (deny / "marker").exists()
        assert connect_errno(port) == 0
        for call, path in (("sys_openat", f"{deny}/new"), ("sys_openat", f"{deny}/f"),
                           ("sys_unlink", f"{deny}/new"), ("sys_execve", f"{deny}/prog")):
            evs = d.wait_for(lambda _: [e for e in events_of(d, call, path) if "monitor mode" in e["message"]],
                             what=f"monitor-mode {call} {path}")
            assert evs[0]["action"] == "KPROBE_ACTION_OVERRIDE", evs
        d.wait_for(lambda _: [e for e in connects(d, me) if "monitor mode" in e["message"]],
                   what="the monitor-mode connect")
        (deny / "marker").unlink()
        (deny / "new").touch()   # for the check after stop
    finally:
        assert d.stop() == 0
    # fail-open: the LSM programs went with the daemon
    assert (deny / "f").read_text() == "secret of deny"
    os.unlink(deny / "new")
    assert run_prog(deny / "prog").returncode == 0 and (deny / "marker").exists()
    assert connect_errno(port) == 0


def test_override_on_a_syscall_without_lsm_or_override_return_is_refused_naming_both(tmp_path):
    """Decided when the daemon plans the policy (manager.prepare), before any BPF is compiled."""
    (tmp_path / "o.yaml").write_text(override_policy("o", "/tmp/never-created-"))
    [policy] = loader.load_file(tmp_path / "o.yaml", "o.yaml")
    if FEATURES.bpf_lsm:   # the kernel lane: planned onto BPF LSM
        tracing, plans, *_ = manager.prepare(policy, FEATURES, manager.policy_mode(policy))
        assert [p.backend for p in plans] == [hooks.BACKEND_LSM_OVERRIDE] * 3
        return
    with pytest.raises(hooks.PlanError) as exc:
        manager.prepare(policy, FEATURES, manager.policy_mode(policy))
    error = str(exc.value)
    assert error.startswith("spec.kprobes[0].selectors[0].matchActions: Override on 'sys_openat' cannot "
                            "be honoured here: no override_return: "), error
    assert f"no bpf_lsm: {FEATURES.notes['bpf_lsm']} (its equivalent: lsm:path_mknod, lsm:file_open)" in error
    assert "spec.kprobes[1].selectors[0].matchActions: Override on 'sys_unlink'" in error
    assert "spec.kprobes[2].selectors[0].matchActions: Override on 'sys_execve'" in error


def test_what_the_lsm_equivalent_cannot_evaluate_is_refused_naming_the_field():
    """The equivalent supplies the path (or filename) only: a selector on another
    argument, or on the return value, cannot mean the same there."""
    from tetrad.policy.model import Arg, Hook
    lsm_only = features_mod.Features(bpf_lsm=True)
    hook = Hook(kind="kprobe", name="sys_openat", path="spec.kprobes[0]", syscall=True,
                args=(Arg(1, "string"), Arg(2, "int")),
                selectors=({"matchArgs": [{"index": 2, "operator": "Mask", "values": ["64"]}],
                            "matchActions": [{"action": "Override", "argError": -1}]},))
    with pytest.raises(hooks.PlanError) as exc:
        hooks.plan(hook, lsm_only, override=True)
    assert str(exc.value) == (
        'kprobe "sys_openat": its Override is enforced by BPF LSM (lsm:path_mknod, lsm:file_open), which '
        "cannot evaluate spec.kprobes[0].args[1]: index 2 (the LSM equivalent supplies only argument 1); "
        "spec.kprobes[0].selectors[0].matchArgs[0]: index 2 (the LSM equivalent supplies only argument 1)")
    ok = hooks.plan(Hook(kind="kprobe", name="__x64_sys_unlinkat", path="p", syscall=True, args=(Arg(1, "string"),)),
                    lsm_only, override=True)
    assert (ok.backend, ok.attach, ok.override_arg) == (hooks.BACKEND_LSM_OVERRIDE, [("lsm", "path_unlink", 0)], 1)


def made_up_kernel(**caps) -> features_mod.Features:
    f = features_mod.Features(kernel_release="test")
    for name in ("override_return", "bpf_lsm"):
        setattr(f, name, caps.get(name, False))
        if not caps.get(name):
            f.notes[name] = f"{name} missing here"
    return f


def test_the_override_rule_prefers_override_return_then_the_lsm_equivalent():
    both = made_up_kernel(override_return=True, bpf_lsm=True)
    c = backends.choose_override(both, "sys_openat", syscall=True)
    assert (c.backend, c.target, c.reason) == ("override_return", backends.syscall_function("openat"), "preferred")
    # not on the kernel's error-injection list: the LSM equivalent, saying why
    c = backends.choose_override(both, "security_file_open", error_injectable=False)
    assert (c.backend, c.target) == ("bpf_lsm", "lsm:file_open")
    assert c.reason.startswith("no override_return: security_file_open is not error-injectable; "
                               "equivalent with a difference: none")
    # the policy engine does not use bpf_override_return yet, and says so
    c = backends.choose_override(both, "sys_unlink", syscall=True, families=backends.ENGINE_OVERRIDE_FAMILIES)
    assert (c.backend, c.target) == ("bpf_lsm", "lsm:path_unlink")
    assert c.reason.startswith("no override_return: the kernel has it, tetrad's policy engine does not use it yet; "
                               "equivalent with a difference: the path is the entry removed")
    c = backends.choose_override(made_up_kernel(bpf_lsm=True), "__x64_sys_execve", syscall=True)
    assert (c.backend, c.target) == ("bpf_lsm", "lsm:bprm_creds_for_exec")


def test_the_override_rule_refuses_naming_both_mechanisms():
    c = backends.choose_override(made_up_kernel(), "sys_openat", syscall=True)
    assert (c.backend, c.reason) == (None, "no override_return: override_return missing here; no bpf_lsm: "
                                           "bpf_lsm missing here (its equivalent: lsm:path_mknod, lsm:file_open)")
    c = backends.choose_override(made_up_kernel(bpf_lsm=True), "sys_write", syscall=True)
    assert (c.backend, c.reason) == (None, "no override_return: override_return missing here; "
                                           "no bpf_lsm: no BPF LSM hook stands in for sys_write")
