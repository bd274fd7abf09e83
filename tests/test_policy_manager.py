"""The policy manager's transport-independent API (list, add, delete,
enable, disable) on the real kernel, without a daemon around it."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tetrad import features as features_mod
from tetrad import offsets
from tetrad.btf import Btf
from tetrad.events import EventBuilder
from tetrad.policy.manager import PolicyManager
from tetrad.poller import Poller
from tetrad.process.cache import ProcessCache
from tetrad.timefmt import KtimeClock

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  kprobes:
  - call: sys_getpgid
    syscall: true
    args:
    - index: 0
      type: int
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values: ["{value}"]
"""


@pytest.fixture(scope="module")
def feats():
    # probed by loading, as the daemon does: the files alone cannot tell that this kernel
    # refuses fentry, which the backend rule would then choose
    return features_mod.detect()


@pytest.fixture
def manager(tmp_path, feats):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.yaml").write_text(POLICY.format(name="api-a", value=6101))
    macros = offsets.resolve(Btf.load(), offsets.PROCESS_MEMBERS + offsets.POLICY_MEMBERS)
    got = []
    poller = Poller()
    m = PolicyManager(str(tmp_path / "dir"), feats, macros, 64, emit=lambda kind, built: got.append(built[0]),
                      builder=EventBuilder("test", KtimeClock()), cache=ProcessCache(), poller=poller)
    m.got = got
    m.start()
    yield m
    m.close()
    poller.close()


def calls(m, value: int) -> list[int]:
    """Run getpgid(value) in a child; the pids of the events it produced."""
    child = subprocess.Popen(["/usr/bin/python3", "-c", f"import os\ntry:\n os.getpgid({value})\nexcept OSError: pass"])
    child.wait(30)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        m.poller.wait(50)
    return [e["process_kprobe"]["process"]["pid"] for e in m.got
            if e["process_kprobe"]["process"]["pid"] == child.pid]


def test_list_enable_disable_delete_add(manager, tmp_path):
    m = manager
    [a] = m.list()
    assert (a["name"], a["file"], a["state"], a["source"]) == ("api-a", "a.yaml", "loaded", "directory")
    assert a["hooks"][0]["backend"] in ("syscall-tracepoints", "kprobe")
    assert len(calls(m, 6101)) == 1

    assert m.disable("api-a") and m.list()[0]["state"] == "disabled"
    assert calls(m, 6101) == []
    assert m.enable("api-a") and m.list()[0]["state"] == "loaded"
    assert len(calls(m, 6101)) == 1

    assert m.delete("api-a") and m.list() == []
    assert calls(m, 6101) == []
    assert not m.delete("api-a")

    other = tmp_path / "elsewhere.yaml"
    other.write_text(POLICY.format(name="api-b", value=6102))
    [b] = m.add(str(other))
    assert (b["name"], b["state"], b["source"]) == ("api-b", "loaded", "api")
    assert len(calls(m, 6102)) == 1
    # a directory reload keeps what add() loaded
    m.reload()
    assert {p["name"] for p in m.list()} == {"api-a", "api-b"}


def test_duplicate_names_are_an_error(manager, tmp_path):
    (tmp_path / "dir" / "b.yaml").write_text(POLICY.format(name="api-a", value=6103))
    manager.reload()
    states = {p["file"]: (p["state"], p.get("error", "")) for p in manager.list()}
    assert states["a.yaml"][0] == "loaded"
    assert states["b.yaml"][0] == "error" and "a policy named 'api-a' is already loaded from a.yaml" in states["b.yaml"][1]
