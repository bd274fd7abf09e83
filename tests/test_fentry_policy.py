"""kprobes: hooks served by fentry/fexit, as the running kernel allows.

One policy forces fentry (`spec.options: hook-backend: fentry`).  On a kernel
with BPF trampolines (the kernel lane's Debian guest) its selectors and actions
run in fentry/fexit programs: on a syscall (its __x64_sys_* entry function,
whose arguments sit behind a pt_regs pointer) and on plain kernel functions, at
the entry, and at the exit alone where the return value is traced.  On a kernel
that refuses fentry (the development machines) the policy, and any policy under
--hook-backend=fentry, is refused with a one-line reason naming the hook.
The guide's scenario on fentry is tests/test_policy_scenario.py's fentry run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest

from conftest import REPO, tetrad_cmd
from policytools import int_args, kprobe_events, run_workload, settle, start_with_policies, status
from tetrad import features as features_mod
from tetrad.policy import hooks, loader, manager

EXAMPLES = REPO / "etc" / "tetrad" / "examples"
# The lane's kernel must have fentry (its tests then fail rather than go uncollected);
# elsewhere the kernel is asked.
LANE_FENTRY = "fentry" in os.environ.get("KERNEL_LANE_EXPECT_HOOKS", "").split(",")
FEATURES = None if LANE_FENTRY else features_mod.detect()
HAS_FENTRY = LANE_FENTRY or FEATURES.fentry


def getpgid_hook(message: str, value: int, actions: str = "", ret: str = "") -> str:
    return f"""  - call: sys_getpgid
    syscall: true
    message: "{message}"
    args:
    - index: 0
      type: int
{ret}    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values: ["{value}"]
{actions}"""


def action(name: str) -> str:
    return f"      matchActions:\n      - action: {name}\n"


def policy(watched_dir: str) -> str:
    getpgid = (getpgid_hook("Equal", 4242) + getpgid_hook("NoPost", 7001, action("NoPost"))
               + getpgid_hook("Post", 7001) + getpgid_hook("Sigkill", 7004, action("Sigkill")))
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: fentry-ops
spec:
  options:
  - name: hook-backend
    value: fentry
  kprobes:
{getpgid}  - call: sys_getpgid
    syscall: true
    message: "Ret"
    args:
    - index: 0
      type: int
    return: true
    returnArg:
      index: 0
      type: int
    selectors:
    - matchReturnArgs:
      - operator: Equal
        values: ["-3"]
  - call: security_file_open
    message: "Open"
    args:
    - index: 0
      type: file
    selectors:
    - matchArgs:
      - index: 0
        operator: Prefix
        values: ["{watched_dir}/"]
  - call: inet_stream_connect
    message: "Refused"
    args:
    - index: 2
      type: int
    return: true
    returnArg:
      index: 0
      type: int
    selectors:
    - matchReturnArgs:
      - operator: Equal
        values: ["-111"]
"""


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    return tmp_path_factory.mktemp("fentry-files")


@pytest.fixture(scope="module")
def d(tmp_path_factory, watched):
    daemon = start_with_policies(tmp_path_factory.mktemp("fentry"), {"fentry.yaml": policy(str(watched / "w"))},
                                 timeout=300)
    yield daemon
    daemon.stop()


def test_forced_fentry_is_served_or_refused_with_the_reason(d):
    [pol] = status(d)["policies"]
    listed = subprocess.run(tetrad_cmd() + ["tracingpolicy", "list", f"--server-address=unix://{d.sock}"],
                            capture_output=True, text=True, check=True).stdout
    if not HAS_FENTRY:
        assert pol["state"] == "error", pol
        reason = FEATURES.notes["fentry"]
        assert pol["error"] == ('fentry.yaml[0]: kprobe "sys_getpgid": hook-backend=fentry forced, but '
                                f"{reason}"), pol
        assert "\n" not in pol["error"] and pol["error"] in listed
        # the daemon-wide flag is refused the same way, per hook
        [example] = loader.load_file(EXAMPLES / "tcp-connect.yaml", "tcp-connect.yaml")
        with pytest.raises(hooks.PlanError) as exc:
            manager.prepare(example, FEATURES, default_backend="fentry")
        assert str(exc.value) == f'kprobe "tcp_connect": hook-backend=fentry forced, but {reason}'
        return
    assert pol["state"] == "loaded", pol
    assert {h["backend"] for h in pol["hooks"]} == {"fentry"}, pol
    attach = [h["attach"] for h in pol["hooks"]]
    assert attach[0] == ["fentry __x64_sys_getpgid"]
    assert attach[4] == ["fexit __x64_sys_getpgid"]      # a traced return value: fexit alone
    assert attach[5] == ["fentry security_file_open"] and attach[6] == ["fexit inet_stream_connect"]
    assert "kprobe security_file_open: fentry (fentry security_file_open)" in listed


if HAS_FENTRY:
    GETPGID_ALL = """
import os, sys
for v in sys.argv[2:]:
    try:
        os.getpgid(int(v))
    except OSError:
        pass
"""

    def test_match_args_on_a_syscall_entry(d):
        pid, _, _ = run_workload(GETPGID_ALL, 4241, 4242, 4243)
        events = settle(d)
        assert int_args(kprobe_events(events, pid, "Equal")) == [4242]

    def test_nopost_and_post(d):
        pid, _, _ = run_workload(GETPGID_ALL, 7001)
        events = settle(d)
        assert int_args(kprobe_events(events, pid, "Post")) == [7001]
        assert kprobe_events(events, pid, "NoPost") == []

    def test_sigkill_at_a_syscall_entry(d):
        pid, _, rc = run_workload(GETPGID_ALL + "\nprint('survived')", 7004, check=False)
        assert rc == -signal.SIGKILL
        [body] = kprobe_events(settle(d), pid, "Sigkill")
        assert body["action"] == "KPROBE_ACTION_SIGKILL" and int_args([body]) == [7004]

    def test_match_return_args_at_a_syscall_exit(d):
        pid, _, _ = run_workload(GETPGID_ALL, 0, 999999)   # 999999: no such process, -ESRCH
        [body] = kprobe_events(settle(d), pid, "Ret")
        assert body["return"]["int_arg"] == -3 and int_args([body]) == [999999]

    def test_file_argument_of_a_kernel_function(d, watched):
        (watched / "w").mkdir(exist_ok=True)
        (watched / "other").mkdir(exist_ok=True)
        for sub in ("w", "other"):
            (watched / sub / "f").write_text(sub)
        script = "import sys\nfor p in sys.argv[2:]:\n    open(p).read()\n"
        pid, _, _ = run_workload(script, watched / "w" / "f", watched / "other" / "f")
        bodies = kprobe_events(settle(d), pid, "Open")
        assert [b["args"][0]["file_arg"]["path"] for b in bodies] == [str(watched / "w" / "f")]
        assert bodies[0]["function_name"] == "security_file_open"

    def test_int_argument_and_return_of_a_kernel_function(d):
        """inet_stream_connect returns an int: -ECONNREFUSED for a closed port only."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        script = ("import socket, sys\nfor port in sys.argv[2:]:\n    s = socket.socket()\n"
                  "    try:\n        s.connect(('127.0.0.1', int(port)))\n    except OSError:\n        pass\n"
                  "    s.close()\n")
        try:
            pid, _, _ = run_workload(script, listener.getsockname()[1], closed_port)
        finally:
            listener.close()
        [body] = kprobe_events(settle(d), pid, "Refused")
        assert body["return"]["int_arg"] == -111 and int_args([body]) == [16]   # addr_len of sockaddr_in
