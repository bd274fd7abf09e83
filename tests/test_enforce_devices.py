"""Device access prevention through a cgroup device program, with a real
daemon on the real kernel: a policy that Overrides (or Sigkills) opening a
device node makes the open fail with EPERM before it happens, reports it,
lets it through in monitor mode, leaves other devices alone, refuses what
cgroup BPF cannot honour, and blocks nothing once the daemon stops.

The nodes are made with mknod in the test's tmp dir, with the numbers of
/dev/full (1:7) and /dev/zero (1:5); every policy is scoped to a copy of
python at a unique path, so no other process on the machine is refused."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import tetrad_cmd
from policytools import start_with_policies, status, wait_policies
from tetrad import offsets
from tetrad.btf import Btf
from tetrad.enforce.devcgroup import DEV_CHAR, DeviceEnforcer, DeviceRule
from tetrad.enforce.sock import ACTION_KILL, ACTION_MONITOR
from tetrad.features import detect

HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n{options}  kprobes:\n"
OPEN = r"""
import sys
for p in sys.argv[1:]:
    try:
        open(p, "rb").close()
        print("ok", end=" ", flush=True)
    except OSError as e:
        print("errno", e.errno, end=" ", flush=True)   # a caller not killed in time shows
"""
FULL, ZERO = (1, 7), (1, 5)


def open_policy(name, call, exe, op, value, action="Override", mode=None, arg_type="string"):
    index = {"sys_openat": 1, "security_file_open": 0, "fd_install": 1}[call]
    options = f"  options:\n  - name: policy-mode\n    value: {mode}\n" if mode else ""
    act = "- action: Override\n        argError: -1" if action == "Override" else f"- action: {action}"
    return (HEAD.format(name=name, options=options) +
            f"  - call: {call}\n    syscall: {'true' if call.startswith('sys_') else 'false'}\n"
            f"    message: \"no device\"\n"
            f"    args:\n    - index: {index}\n      type: {arg_type}\n"
            f"    selectors:\n"
            f"    - matchBinaries:\n      - operator: In\n        values: [\"{exe}\"]\n"
            f"      matchArgs:\n      - index: {index}\n        operator: {op}\n        values: [\"{value}\"]\n"
            f"      matchActions:\n      {act}\n")


@pytest.fixture
def nodes(tmp_path):
    """tmp/devs/full (1:7) alone in its directory, tmp/zero (1:5) beside it."""
    devs = tmp_path / "devs"
    devs.mkdir()
    full, zero = devs / "full", tmp_path / "zero"
    os.mknod(full, 0o666 | 0o020000, os.makedev(*FULL))
    os.mknod(zero, 0o666 | 0o020000, os.makedev(*ZERO))
    os.chmod(tmp_path, 0o755)
    return str(full), str(zero)


def python_copy(tmp_path, tag):
    exe = tmp_path / f"py-{tag}-{uuid.uuid4().hex[:8]}"
    shutil.copy(os.path.realpath("/usr/bin/python3"), exe)
    return str(exe)


def opens(exe, *paths):
    p = subprocess.run([exe, "-c", OPEN, *paths], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout.strip()


def verdicts(d, policy):
    return [e["process_kprobe"] for e in d.events() if "process_kprobe" in e
            and e["process_kprobe"].get("policy_name") == policy]


def test_device_open_is_refused_before_it_happens(tmp_path, nodes):
    full, zero = nodes
    deny, kill, watch = (python_copy(tmp_path, t) for t in ("deny", "kill", "watch"))
    d = start_with_policies(tmp_path / "d", {
        "deny.yaml": open_policy("deny-full", "sys_openat", deny, "Equal", full),
        "kill.yaml": open_policy("kill-devs", "fd_install", kill, "Prefix", os.path.dirname(full) + "/",
                                 action="Sigkill", arg_type="file"),
        "watch.yaml": open_policy("watch-full", "security_file_open", watch, "Equal", full,
                                  mode="monitor", arg_type="file"),
    })
    try:
        pols = {p["name"]: p for p in status(d)["policies"]}
        assert {n: p["state"] for n, p in pols.items()} == {
            "deny-full": "loaded", "kill-devs": "loaded", "watch-full": "loaded"}, pols
        (line,) = pols["deny-full"]["hooks"]
        assert line["backend"] == "cgroup-bpf" and line["devices"] == [full]
        assert "opening refused with EPERM" in line["note"]

        # Override: the node, and every other path to the same device, refused; others opened
        assert opens(deny, full, "/dev/full", zero) == (0, f"errno {errno.EPERM} errno {errno.EPERM} ok")
        assert opens("/usr/bin/python3", full) == (0, "ok")          # not the scoped binary
        (v, *_) = d.wait_for(lambda _: verdicts(d, "deny-full"), what="the refusal event")
        assert v["action"] == "KPROBE_ACTION_OVERRIDE" and v["function_name"] == "sys_openat"
        assert v["process"]["binary"] == deny
        assert v["args"] == [{"string_arg": full}] and v["return"] == {"int_arg": -errno.EPERM}
        assert v["message"] == "no device"

        # Sigkill: refused, then killed
        assert opens(kill, full) == (-9, "")     # killed as open() returned: no print ran
        (k, *_) = d.wait_for(lambda _: verdicts(d, "kill-devs"), what="the kill event")
        assert k["action"] == "KPROBE_ACTION_SIGKILL" and k["args"] == [{"file_arg": {"path": full}}]

        # monitor mode (the policy's option): opened, and reported with the action it would take
        assert opens(watch, full) == (0, "ok")
        (m, *_) = d.wait_for(lambda _: verdicts(d, "watch-full"), what="the monitor event")
        assert m["action"] == "KPROBE_ACTION_OVERRIDE" and "return" not in m
        assert m["message"] == "no device (monitor mode: not enforced)"

        # set-mode monitor on the Override policy lets the open through, and says so
        subprocess.run(tetrad_cmd() + ["tracingpolicy", "set-mode", "deny-full", "monitor",
                                       f"--server-address=unix://{d.sock}"], check=True)
        wait_policies(d, 3, pred=lambda ps: any(p["name"] == "deny-full" and p["mode"] == "monitor"
                                                and p["state"] == "loaded" for p in ps))
        assert opens(deny, full) == (0, "ok")
        d.wait_for(lambda _: [x for x in verdicts(d, "deny-full") if "monitor mode" in x.get("message", "")],
                   what="the monitor-mode event")
    finally:
        assert d.stop() == 0
    # fail-open: once the daemon is gone nothing stays refused
    assert opens(deny, full) == (0, "ok")
    assert opens(kill, full) == (0, "ok")


def test_override_of_what_is_not_a_device_is_rejected_with_the_reason(tmp_path, nodes):
    full, _ = nodes
    exe = python_copy(tmp_path, "x")
    regular = tmp_path / "devs-and-file"
    regular.mkdir()
    os.mknod(regular / "node", 0o666 | 0o020000, os.makedev(*FULL))
    (regular / "plain").write_text("")
    d = start_with_policies(tmp_path / "d", {
        "file.yaml": open_policy("file", "sys_openat", exe, "Equal", str(tmp_path)),
        "mixed.yaml": open_policy("mixed", "sys_openat", exe, "Prefix", str(regular) + "/"),
        "postfix.yaml": open_policy("postfix", "sys_openat", exe, "Postfix", "/full"),
        "other-arg.yaml": open_policy("other-arg", "sys_openat", exe, "Equal", full).replace(
            "      type: string\n", "      type: string\n    - index: 2\n      type: int\n").replace(
            "      matchActions:", "      - index: 2\n        operator: Equal\n        values: [\"0\"]\n"
            "      matchActions:"),
    })
    try:
        pols = {p["name"]: p for p in status(d)["policies"]}
        assert all(p["state"] == "error" for p in pols.values()), pols
        lsm = "Override on 'sys_openat' cannot be honoured here: no override_return: "
        assert lsm in pols["file"]["error"] and f"{str(tmp_path)!r} is not a device node" in pols["file"]["error"]
        assert f"also names {str(regular / 'plain')!r}, which is not a device node" in pols["mixed"]["error"]
        assert "Postfix cannot be resolved to device nodes" in pols["postfix"]["error"]
        assert "matchArgs[1] is on argument 2, not the path" in pols["other-arg"]["error"]
    finally:
        d.stop()


def test_sigkill_on_paths_that_are_not_all_devices_stays_a_kill_from_the_hook(tmp_path, nodes):
    """Sigkill loads either way; what is not a device rule is killed after the
    fact by the tracing program (the README's table), and `list` says which."""
    exe = python_copy(tmp_path, "k")
    work = tmp_path / "work"
    work.mkdir()
    (work / "plain").write_text("x")
    os.mknod(work / "node", 0o666 | 0o020000, os.makedev(*FULL))
    d = start_with_policies(tmp_path / "d", {
        "k.yaml": open_policy("kill-work", "sys_openat", exe, "Prefix", str(work) + "/", action="Sigkill")})
    try:
        (pol,) = status(d)["policies"]
        assert pol["state"] == "loaded" and [h["backend"] for h in pol["hooks"]] == ["syscall-tracepoints"], pol
        assert opens(exe, str(work / "plain"))[0] == -9
        assert opens(exe, str(work / "node"))[0] == -9
    finally:
        d.stop()


# -- the device enforcer alone ----------------------------------------------

@pytest.fixture(scope="module")
def enforcer():
    e = DeviceEnforcer(detect(quick=True).cgroup_v2_root, offsets.resolve(Btf.load()))
    yield e
    e.close()


def paused_opener(*paths):
    code = "import sys; sys.stdin.readline()\n" + OPEN
    return subprocess.Popen([sys.executable, "-c", code, *paths], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def release(child) -> str:
    out, _ = child.communicate("go\n", timeout=30)
    return out.strip()


def test_pid_scope_monitor_and_mknod(enforcer, nodes, tmp_path):
    full, zero = nodes
    child = paused_opener(full, zero)
    enforcer.set_rule(0, DeviceRule(devices={(DEV_CHAR, *FULL)}, pids={child.pid}))
    try:
        assert release(child) == f"errno {errno.EPERM} ok"
        (v,) = [v for v in enforcer.poll(100) if v.pid == child.pid]
        assert v.device == (DEV_CHAR, *FULL) and v.rule == 0
        # the rule refuses opening, not making a node: a new node is refused when opened
        made = paused_opener(full)
        enforcer.set_rule(0, DeviceRule(devices={(DEV_CHAR, *FULL)}, pids={made.pid}))
        os.mknod(tmp_path / "again", 0o666 | 0o020000, os.makedev(*FULL))
        assert release(made) == f"errno {errno.EPERM}"
        # monitor: reported, allowed
        watched = paused_opener(full)
        enforcer.set_rule(0, DeviceRule(action=ACTION_MONITOR, devices={(DEV_CHAR, *FULL)}, pids={watched.pid}))
        assert release(watched) == "ok"
        assert [v.action for v in enforcer.poll(100) if v.pid == watched.pid] == [ACTION_MONITOR]
    finally:
        enforcer.clear_rule(0)


def test_an_unscoped_rule_spares_the_daemon_itself(enforcer, tmp_path):
    # a memory-device minor no driver serves: opening it fails with ENXIO when
    # allowed, EPERM when refused, and no other process on the machine uses it
    ghost = tmp_path / "ghost"
    os.mknod(ghost, 0o666 | 0o020000, os.makedev(1, 250))
    os.chmod(tmp_path, 0o755)
    # unscoped: every process but tetrad (this process owns the enforcer) and PID 1
    enforcer.set_rule(1, DeviceRule(devices={(DEV_CHAR, 1, 250)}))
    try:
        with pytest.raises(OSError) as own:
            open(ghost, "rb")
        assert own.value.errno == errno.ENXIO
        assert release(paused_opener(str(ghost))) == f"errno {errno.EPERM}"
    finally:
        enforcer.clear_rule(1)
    assert release(paused_opener(str(ghost))) == f"errno {errno.ENXIO}"


def test_the_kill_on_exit_program_runs_only_while_a_rule_kills(enforcer):
    """The exits of every open on the host are hot: the program that kills a
    refused caller is attached only while some rule kills."""
    deny = DeviceRule(devices=[(2, 1, 250)], pids={os.getpid() + 1_000_000})
    enforcer.set_rule(0, deny)
    assert enforcer._kill_exits == []
    enforcer.set_rule(1, DeviceRule(action=ACTION_KILL, devices=[(2, 1, 251)], pids={os.getpid() + 1_000_000}))
    assert "sys_exit_openat" in enforcer._kill_exits
    enforcer.clear_rule(1)
    assert enforcer._kill_exits == []
    enforcer.clear_rule(0)
