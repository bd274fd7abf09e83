"""Hook kinds other than syscalls: a generic tracepoint (args by index into
its format, selectors on them) and a uprobe through BCC, on the real kernel."""

from __future__ import annotations

import os

import pytest

from policytools import WORKLOAD_PYTHON, run_workload, settle, start_with_policies

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"

TRACEPOINT = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: tp-signal
spec:
  tracepoints:
  - subsystem: signal
    event: signal_generate
    message: signal generated
    args:
    - index: 4
      type: int
    - index: 8
      type: int
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values: ["28"]
"""

UPROBE = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: up-getppid
spec:
  uprobes:
  - path: "{LIBC}"
    symbols:
    - getppid
    message: getppid called
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    daemon = start_with_policies(tmp_path_factory.mktemp("hooks"),
                                 {"tp.yaml": TRACEPOINT, "up.yaml": UPROBE})
    yield daemon
    daemon.stop()


def test_hooks_loaded_with_their_backends(d):
    from policytools import status
    pols = {p["name"]: p for p in status(d)["policies"]}
    assert pols["tp-signal"]["state"] == "loaded", pols["tp-signal"]
    assert pols["tp-signal"]["hooks"][0]["backend"] == "tracepoint"
    assert pols["up-getppid"]["state"] == "loaded", pols["up-getppid"]
    assert pols["up-getppid"]["hooks"][0]["backend"] == "uprobe"


def test_tracepoint_args_and_selector(d):
    pid, _, _ = run_workload("import os, signal\nos.kill(os.getpid(), signal.SIGURG)\n"
                             "os.kill(os.getpid(), signal.SIGWINCH)\n")
    events = settle(d)
    mine = [e["process_tracepoint"] for e in events
            if "process_tracepoint" in e and e["process_tracepoint"]["process"]["pid"] == pid]
    assert [(b["subsys"], b["event"], b["args"]) for b in mine] == [
        ("signal", "signal_generate", [{"int_arg": 28}, {"int_arg": pid}])]
    assert mine[0]["policy_name"] == "tp-signal" and mine[0]["message"] == "signal generated"


def test_uprobe(d):
    if not os.path.exists(LIBC):
        pytest.fail(f"{LIBC} missing: this test needs Debian's x86-64 libc")
    pid, _, _ = run_workload("import os\nos.getppid()\n")
    events = settle(d)
    mine = [e["process_uprobe"] for e in events
            if "process_uprobe" in e and e["process_uprobe"]["process"]["pid"] == pid]
    assert mine and mine[0]["path"] == LIBC and mine[0]["symbol"] == "getppid"
    assert mine[0]["process"]["binary"] == WORKLOAD_PYTHON
