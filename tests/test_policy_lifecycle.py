"""Live policy changes on a running daemon: add, modify (in place and by an
atomic rename), delete, SIGHUP, a broken file next to good ones, and
unchanged policies keep their programs and events."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import Daemon
from policytools import WORKLOAD_PYTHON, int_args, kprobe_events, settle, status, wait_policies

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: sys_getpgid
    syscall: true
    message: {name}
    args:
    - index: 0
      type: int
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values: ["{value}"]
"""

LOOP = """
import os, sys, time
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for v in (5101, 5102, 5103):
        try:
            os.getpgid(v)
        except OSError:
            pass
    time.sleep(0.02)
"""


@pytest.fixture
def d(tmp_path):
    daemon = Daemon(tmp_path)
    daemon.wait_ready()
    yield daemon
    daemon.stop()


def _first_event_after(d, pid, message, since: float, value=None, timeout=10.0) -> float:
    """Seconds from `since` until an event of `message` (and value) is exported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = kprobe_events(d.events(), pid, message)
        if value is not None:
            got = [b for b in got if b["args"][0]["int_arg"] == value]
        if got:
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError(f"no {message} event within {timeout}s:\n{d.log_text()[-2000:]}")


def test_add_modify_delete_while_a_workload_runs(d):
    workload = subprocess.Popen([WORKLOAD_PYTHON, "-c", LOOP, "30"])
    try:
        path = d.policy_dir / "live.yaml"
        t0 = time.monotonic()
        path.write_text(POLICY.format(name="live", value=5101))
        _first_event_after(d, workload.pid, "live", t0, 5101)   # latency: benchmarks/policy_io.py

        t1 = time.monotonic()
        path.write_text(POLICY.format(name="live", value=5102))
        _first_event_after(d, workload.pid, "live", t1, 5102)
        time.sleep(0.5)
        n = len(d.events())
        time.sleep(0.5)
        later = kprobe_events(d.events()[n:], workload.pid, "live")
        assert later and set(int_args(later)) == {5102}, "the old selector value is still active"

        path.unlink()
        wait_policies(d, 0, pred=lambda pols: not pols)
        time.sleep(0.5)
        n = len(d.events())
        time.sleep(1.0)
        assert kprobe_events(d.events()[n:], workload.pid, "live") == []
    finally:
        workload.kill()
        workload.wait()


def test_atomic_rename_into_place_and_subdirectories(d):
    workload = subprocess.Popen([WORKLOAD_PYTHON, "-c", LOOP, "20"])
    try:
        tmp = d.policy_dir / ".edit.yaml.tmp"     # hidden: not loaded while written
        tmp.write_text(POLICY.format(name="renamed", value=5103))
        t0 = time.monotonic()
        os.rename(tmp, d.policy_dir / "renamed.yaml")
        _first_event_after(d, workload.pid, "renamed", t0, 5103)
        sub = d.policy_dir / "team"
        sub.mkdir()
        time.sleep(0.3)
        t1 = time.monotonic()
        (sub / "nested.yaml").write_text(POLICY.format(name="nested", value=5101))
        _first_event_after(d, workload.pid, "nested", t1, 5101)
    finally:
        workload.kill()
        workload.wait()


def test_broken_file_next_to_good_ones(d):
    (d.policy_dir / "good.yaml").write_text(POLICY.format(name="good", value=5101))
    (d.policy_dir / "bad.yaml").write_text(POLICY.format(name="bad", value=5102).replace("type: int", "type: flie"))
    pols = wait_policies(d, 2)
    by_file = {p["file"]: p for p in pols}
    assert by_file["good.yaml"]["state"] == "loaded"
    assert by_file["bad.yaml"]["state"] == "error"
    assert by_file["bad.yaml"]["error"].startswith(
        'bad.yaml[0]: spec.kprobes[0].args[0].type: unknown type "flie"')
    assert 'bad.yaml[0]: spec.kprobes[0].args[0].type: unknown type "flie"' in d.log_text()
    assert d.proc.poll() is None
    # the good one works
    p = subprocess.run([WORKLOAD_PYTHON, "-c", LOOP, "0.3"])
    assert p.returncode == 0


def test_unchanged_policy_is_left_alone_and_sighup_reloads(d):
    (d.policy_dir / "steady.yaml").write_text(POLICY.format(name="steady", value=5101))
    (d.policy_dir / "other.yaml").write_text(POLICY.format(name="other", value=5102))
    wait_policies(d, 2, pred=lambda pols: all(p["state"] == "loaded" for p in pols))
    workload = subprocess.Popen([WORKLOAD_PYTHON, "-c", LOOP, "20"])
    try:
        _first_event_after(d, workload.pid, "steady", time.monotonic(), 5101)
        (d.policy_dir / "other.yaml").write_text(POLICY.format(name="other", value=5103))
        _first_event_after(d, workload.pid, "other", time.monotonic(), 5103)
        # steady's events never stopped: no gap longer than the workload's period x a few
        messages = [e["process_kprobe"]["message"] for e in d.events() if "process_kprobe" in e]
        assert d.log_text().count("policy steady loaded") == 1
        assert messages.count("steady") > 10
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reloaded" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reloaded" in d.log_text()
        assert d.log_text().count("policy steady loaded") == 1   # unchanged: not reloaded
        assert d.log_text().count("policy other loaded") == 1
        assert d.log_text().count("policy other changed in place") == 1   # a new value: same programs
    finally:
        workload.kill()
        workload.wait()


SEQUENCE_BASE = 3000000
SEQUENCE_LOOP = """
import os, sys, time
stop = sys.argv[1]
i = 0
while not os.path.exists(stop):
    try:
        os.getpgid(%d + i)
    except OSError:
        pass
    i += 1
    time.sleep(0.002)
""" % SEQUENCE_BASE

SEQUENCE_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: sequence
spec:
  kprobes:
  - call: sys_getpgid
    syscall: true
    message: {message}
    args:
    - index: 0
      type: int
    selectors:
    - matchArgs:
      - index: 0
        operator: InRange
        values: ["{low}:{high}"]
{more}"""
GETSID_HOOK = """  - call: sys_getsid
    syscall: true
    args:
    - index: 0
      type: int
"""


def _prog_ids(pid: int) -> set[int]:
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            ids |= {int(line.split()[1]) for line in open(f"/proc/{pid}/fdinfo/{fd}") if line.startswith("prog_id:")}
        except OSError:
            pass
    return ids


def test_a_change_of_values_keeps_the_programs_and_every_event(d, tmp_path):
    """A workload numbers its calls; the policy's values change while it
    runs: the daemon's programs stay the same, the new values judge at once,
    and every call has exactly one event, judged by the old values or the new."""
    stop = tmp_path / "stop"
    workload = subprocess.Popen([WORKLOAD_PYTHON, "-c", SEQUENCE_LOOP, str(stop)])
    path = d.policy_dir / "sequence.yaml"
    try:
        def put(text):
            tmp = d.policy_dir / ".sequence.tmp"
            tmp.write_text(text)
            os.rename(tmp, path)

        put(SEQUENCE_POLICY.format(message="old", low=SEQUENCE_BASE, high=SEQUENCE_BASE + 999999, more=""))
        _first_event_after(d, workload.pid, "old", time.monotonic())
        programs = _prog_ids(d.proc.pid)
        time.sleep(0.3)
        put(SEQUENCE_POLICY.format(message="new", low=SEQUENCE_BASE - 1, high=SEQUENCE_BASE + 999998, more=""))
        _first_event_after(d, workload.pid, "new", time.monotonic())
        assert _prog_ids(d.proc.pid) == programs, "a change of values replaced the programs"
        assert "policy sequence changed in place" in d.log_text()
        time.sleep(0.3)
        # a new hook needs programs of its own: the test can tell
        put(SEQUENCE_POLICY.format(message="hooks", low=SEQUENCE_BASE, high=SEQUENCE_BASE + 999999,
                                   more=GETSID_HOOK))
        _first_event_after(d, workload.pid, "hooks", time.monotonic())
        assert _prog_ids(d.proc.pid) != programs
        time.sleep(0.3)
    finally:
        stop.touch()
        workload.wait(10)
    events = settle(d)
    rank = {"old": 0, "new": 1, "hooks": 2}
    seen = sorted(((b["args"][0]["int_arg"] - SEQUENCE_BASE, b["message"])
                   for b in kprobe_events(events, workload.pid) if b.get("message") in rank),
                  key=lambda x: (x[0], rank[x[1]]))
    numbers = [n for n, _ in seen]
    assert set(range(numbers[0], numbers[-1] + 1)) <= set(numbers), "calls without an event"
    before_hooks = [n for n, m in seen if m != "hooks"]
    assert len(before_hooks) == len(set(before_hooks)), "calls with two events"
    # old, then new, then hooks, in the order of the calls
    order = [rank[m] for _, m in seen]
    assert order == sorted(order)
