"""matchBinaries / matchParentBinaries with followChildren, decided in the
kernel by a real daemon: a process matches when it, or an ancestor, exec'd a
listed binary — including a shell that was running before the policy loaded.
Each workload's calls are made by a process whose own binary is NOT listed
(python under a copied shell), so an ignored followChildren fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from policytools import WORKLOAD_PYTHON, int_args, kprobe_events, settle, start_with_policies, status

GETPGID = "import os\nprint(os.getpid(), flush=True)\ntry:\n    os.getpgid(4343)\nexcept OSError:\n    pass\n"


def policy(shell: str) -> str:
    def hook(message, selector):
        return (f"  - call: sys_getpgid\n    syscall: true\n    message: \"{message}\"\n"
                f"    args:\n    - index: 0\n      type: int\n    selectors:\n"
                f"    - {selector}\n      matchArgs:\n      - index: 0\n        operator: Equal\n"
                f"        values: [\"4343\"]\n")

    def binaries(key, op, follow):
        return f"{key}:\n      - operator: {op}\n        values: [\"{shell}\"]\n        followChildren: {follow}\n"

    return ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: follow-children\n"
            "spec:\n  kprobes:\n" + "".join([
                hook("FollowIn", binaries("matchBinaries", "In", "true")),
                hook("FollowNotIn", binaries("matchBinaries", "NotIn", "true")),
                hook("PlainIn", binaries("matchBinaries", "In", "false")),
                hook("ParentFollowIn", binaries("matchParentBinaries", "In", "true")),
                hook("ParentPlainIn", binaries("matchParentBinaries", "In", "false")),
            ]))


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """dash under a path of its own: the listed binary."""
    path = tmp_path_factory.mktemp("follow") / "followsh"
    shutil.copy(os.path.realpath("/usr/bin/dash"), path)
    path.chmod(0o755)
    return str(path)


def python_via(shell: str, hops: int, stdin=None) -> subprocess.Popen:
    """`shell` -> (dash ->)*hops -> python calling getpgid(4343); prints python's pid."""
    cmd = f"{WORKLOAD_PYTHON} -c '{GETPGID}'"
    for _ in range(hops):
        cmd = f"/usr/bin/dash -c \"{cmd}\" ; true"
    if stdin is not None:
        cmd = "read go; " + cmd
    return subprocess.Popen([shell, "-c", cmd], stdin=stdin, stdout=subprocess.PIPE, text=True)


def pid_of(proc: subprocess.Popen, line: str | None = None) -> int:
    out, _ = proc.communicate(line, timeout=30)
    assert proc.returncode == 0, out
    return int(out.split()[0])


def test_follow_children_matches_descendants_and_running_shells(tmp_path, shell):
    # started before the policy: its children are matched through the daemon's /proc seed
    early = python_via(shell, hops=1, stdin=subprocess.PIPE)
    d = start_with_policies(tmp_path, {"follow.yaml": policy(shell)})
    try:
        [loaded] = status(d)["policies"]
        assert loaded["state"] == "loaded", loaded
        grandchild = pid_of(python_via(shell, hops=1))   # shell -> dash -> python
        child = pid_of(python_via(shell, hops=0))        # shell -> python
        seeded = pid_of(early, "go\n")
        outsider = pid_of(subprocess.Popen([WORKLOAD_PYTHON, "-c", GETPGID], stdout=subprocess.PIPE,
                                           text=True))
        events = settle(d)
    finally:
        d.stop()
    for pid in (grandchild, child, seeded):
        assert int_args(kprobe_events(events, pid, "FollowIn")) == [4343], pid
        assert kprobe_events(events, pid, "FollowNotIn") == [], pid
        assert kprobe_events(events, pid, "PlainIn") == [], pid     # python itself is not listed
    assert kprobe_events(events, outsider, "FollowIn") == []
    assert int_args(kprobe_events(events, outsider, "FollowNotIn")) == [4343]
    # a transitive parent for the grandchild, the direct parent for the child
    assert int_args(kprobe_events(events, grandchild, "ParentFollowIn")) == [4343]
    assert kprobe_events(events, grandchild, "ParentPlainIn") == []
    assert int_args(kprobe_events(events, child, "ParentPlainIn")) == [4343]
    assert kprobe_events(events, outsider, "ParentFollowIn") == []

