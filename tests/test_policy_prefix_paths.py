"""Prefix on a file path, decided by bpf/policy.c's prefix gate (every selector
needs the path to start with one of its values: the path's first bytes decide)
exactly as by the full evaluation: the same policy with a selector that
disables the gate reports the same opens.  Paths are those the kernel walk
gives: symlinks resolved, relative opens absolute, mounts crossed, from the
global root (a chroot does not shorten them), as seen through a bind mount."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import exits_of
from policytools import WORKLOAD_PYTHON, kprobe_events, settle, start_with_policies


def policy(name: str, base: str, extra_selector: str = "") -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: fd_install
    syscall: false
    args:
    - index: 0
      type: int
    - index: 1
      type: file
    selectors:
    - matchArgs:
      - index: 1
        operator: Prefix
        values: ["{base}/a/", "{base}/mnt/"]
    - matchArgs:
      - index: 1
        operator: Prefix
        values: ["{base}/pre"]
{extra_selector}"""


# no Prefix: the hook has no gate, every open goes through the selectors
UNGATED = """    - matchArgs:
      - index: 0
        operator: Equal
        values: ["-7"]
"""

WORKLOAD = """
import json, os, sys
base = sys.argv[1]
def touch(path):
    os.close(os.open(path, os.O_RDONLY))
touch(f"{base}/a/f1")              # match
touch(f"{base}/b/f2")              # no match
touch(f"{base}/pre-x")             # match: a prefix that ends inside a component
touch(f"{base}/a")                 # no match: "/a" has no trailing slash
touch(f"{base}/b/link")            # match: the symlink's target is a/f1
touch(f"{base}/a/out")             # no match: the symlink's target is b/f2
touch(f"{base}/mnt/f3")            # match: across a mount point
touch(f"{base}/bind/f1")           # no match: a/f1 seen through a bind mount
touch(f"{base}/a/x/y/z/w/f4")      # match: deeper
touch(f"{base}/" + "a" * 200 + "/f5")   # no match: a long first component
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(100)]
touch(f"{base}/a/f1")              # match: the fd table outgrew the one in files_struct
os.chdir(f"{base}/a")
touch("f1")                        # match: a relative path
print(json.dumps({"pid": os.getpid()}), flush=True)
os.chroot(f"{base}/a")
touch("/f1")                       # match: the path from the global root
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = os.path.realpath(tmp_path_factory.mktemp("prefix"))
    for d in ("a/x/y/z/w", "b", "mnt", "bind", "a" * 200):
        os.makedirs(f"{base}/{d}")
    for f in ("a/f1", "b/f2", "pre-x", "a/x/y/z/w/f4", "a" * 200 + "/f5"):
        open(f"{base}/{f}", "w").close()
    os.symlink(f"{base}/a/f1", f"{base}/b/link")
    os.symlink(f"{base}/b/f2", f"{base}/a/out")
    subprocess.run(["mount", "-t", "tmpfs", "tetrad-test", f"{base}/mnt"], check=True)
    subprocess.run(["mount", "--bind", f"{base}/a", f"{base}/bind"], check=True)
    try:
        open(f"{base}/mnt/f3", "w").close()
        daemon = start_with_policies(tmp_path_factory.mktemp("prefix-daemon"), {
            "gated.yaml": policy("prefix-gated", base),
            "ungated.yaml": policy("prefix-ungated", base, UNGATED)})
        try:
            yield daemon, base
        finally:
            daemon.stop()
    finally:
        subprocess.run(["umount", f"{base}/bind"], check=False)
        subprocess.run(["umount", f"{base}/mnt"], check=False)


def test_prefix_on_file_paths(setup):
    d, base = setup
    out = subprocess.run([WORKLOAD_PYTHON, "-c", WORKLOAD, base], capture_output=True, text=True,
                         check=True, timeout=30)
    pid = json.loads(out.stdout)["pid"]
    d.wait_for(lambda ev: exits_of(ev, pid), what="the workload's exit")
    mine = kprobe_events(settle(d, 1.0), pid)

    def paths(name):
        return [b["args"][1]["file_arg"]["path"] for b in mine if b["policy_name"] == name]

    expected = [f"{base}/a/f1", f"{base}/pre-x", f"{base}/a/f1", f"{base}/mnt/f3",
                f"{base}/a/x/y/z/w/f4", f"{base}/a/f1", f"{base}/a/f1", f"{base}/a/f1"]
    assert paths("prefix-ungated") == expected
    assert paths("prefix-gated") == expected


def selectors(*entries: str) -> str:
    return "".join(f"""    - matchArgs:
      - index: {index}
        operator: {op}
        values: [{", ".join(f'"{v}"' for v in values)}]
""" for index, op, values in entries)


@pytest.mark.parametrize("entries, gate", [
    ([(1, "Prefix", ["/etc/", "/var/"]), (1, "Prefix", ["/usr/lib/"])], (1, ["/etc/", "/var/", "/usr/lib/"])),
    ([(1, "Prefix", ["/etc/"]), (0, "Equal", ["3"])], None),        # a selector without a Prefix
    ([(1, "NotPrefix", ["/etc/"])], None),
    ([(1, "Postfix", [".conf"])], None),
    ([(1, "Prefix", ["/etc/", ""])], None),                            # "" is a prefix of every path
    ([(1, "Equal", ["/etc/passwd"])], None),
])
def test_which_hooks_get_a_prefix_gate(entries, gate):
    """The gate only where every selector needs the file to start with one of
    its Prefix values: anything else could match a path the gate refuses."""
    import yaml

    from tetrad.policy.loader import load_document
    from tetrad.policy.program import prefix_gate
    text = policy("gate", "/unused").split("    selectors:\n")[0] + "    selectors:\n" + selectors(*entries)
    loaded = load_document(yaml.safe_load(text), "gate.yaml", 0)
    assert prefix_gate(loaded.hooks[0]) == gate
