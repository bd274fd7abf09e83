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


MESSAGE_POLICY = POLICY.replace("    syscall: true\n", "    syscall: true\n    message: {message}\n")
SID_HOOK = """  - call: sys_getsid
    syscall: true
    args:
    - index: 0
      type: int
"""


def prog_ids(program) -> set[int]:
    return {int(line.split()[1]) for fn in program.bpf.funcs.values()
            for line in open(f"/proc/self/fdinfo/{fn.fd}") if line.startswith("prog_id:")}


def test_a_changed_value_is_switched_in_on_the_same_programs(manager, tmp_path):
    m = manager
    path = tmp_path / "dir" / "a.yaml"
    path.write_text(MESSAGE_POLICY.format(name="api-a", value=6101, message="first"))
    m.reload()
    program = m.entries[0].program
    ids = prog_ids(program)
    assert ids and len(calls(m, 6101)) == 1

    # a record judged by the old configuration, still queued when the new one comes in
    child = subprocess.Popen(["/usr/bin/python3", "-c", "import os\ntry:\n os.getpgid(6101)\nexcept OSError: pass"])
    child.wait(30)
    path.write_text(MESSAGE_POLICY.format(name="api-a", value=6104, message="second"))
    m.reload()
    [a] = m.list()
    assert a["state"] == "loaded" and m.entries[0].program is program and prog_ids(program) == ids
    assert len(calls(m, 6104)) == 1 and calls(m, 6101) == []
    by_child = {e["process_kprobe"]["process"]["pid"]: e["process_kprobe"]["message"] for e in m.got}
    assert by_child[child.pid] == "first"   # rendered as the policy that judged it said
    assert [e["process_kprobe"]["message"] for e in m.got][-1] == "second"

    # and back: the first configuration's slots are written afresh
    path.write_text(MESSAGE_POLICY.format(name="api-a", value=6105, message="third"))
    m.reload()
    assert m.entries[0].program is program and prog_ids(program) == ids
    assert len(calls(m, 6105)) == 1 and calls(m, 6101) == [] and calls(m, 6104) == []

    # another hook: programs of its own, the old ones closed
    path.write_text(MESSAGE_POLICY.format(name="api-a", value=6105, message="fourth") + SID_HOOK)
    m.reload()
    assert m.entries[0].program is not program and prog_ids(m.entries[0].program).isdisjoint(ids)
    assert program.bpf.funcs == {}
    assert len(calls(m, 6105)) == 1


FILE_PREFIX_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: api-a
spec:
  kprobes:
  - call: security_file_open
    syscall: false
    args:
    - index: 0
      type: file
    selectors:
    - matchArgs:
      - index: 0
        operator: Prefix
        values: ["{prefix}"]
"""


def opened(m, path) -> bool:
    """Open `path` in a child; whether the policy reported it."""
    child = subprocess.Popen(["/usr/bin/python3", "-c", f"open({str(path)!r}).close()"])
    child.wait(30)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        m.poller.wait(50)
    return any(e["process_kprobe"]["process"]["pid"] == child.pid for e in m.got)


def test_a_changed_prefix_is_judged_by_the_gate_of_the_new_configuration(manager, tmp_path):
    # every selector needs a Prefix here, so the path's first bytes are checked
    # first against the union of the values (the prefix gate): each
    # configuration must have its own gate values
    m = manager
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_text("x")
    path = tmp_path / "dir" / "a.yaml"
    for prefix, seen, unseen in (("one", "one", "two"), ("two", "two", "one"), ("one", "one", "two")):
        path.write_text(FILE_PREFIX_POLICY.format(prefix=f"{tmp_path}/{prefix}/"))
        m.reload()
        assert opened(m, tmp_path / seen / "f"), prefix
        assert not opened(m, tmp_path / unseen / "f"), prefix


def test_the_watcher_tells_a_file_being_written_from_a_whole_change(tmp_path):
    from tetrad.policy.inotify import DirectoryWatcher
    w = DirectoryWatcher(str(tmp_path))
    try:
        with open(tmp_path / "p.yaml", "w") as f:
            f.write("kind: Tracing")
            f.flush()
            assert w.drain() and not w.complete()   # created and written, not closed yet
        assert w.drain() and w.complete()
        with open(tmp_path / ".p.yaml.swp", "w") as f:   # hidden: no policy of its own
            f.write("x")
            f.flush()
            assert w.drain() and w.complete()
            os.rename(tmp_path / ".p.yaml.swp", tmp_path / "q.yaml")   # whole at once
            assert w.drain() and w.complete()
        with open(tmp_path / "r.json", "w") as f:
            f.write("{")
            f.flush()
            assert w.drain() and not w.complete()
            w.settled()   # the directory was read meanwhile: later events decide
            assert w.complete()
        (tmp_path / "p.yaml").unlink()
        assert w.drain() and w.complete()
    finally:
        w.close()


def test_a_change_the_maps_cannot_hold_beside_the_old_one_loads_anew(manager, tmp_path):
    """str_eq holds 1024 strings: a policy of 600 cannot have two configurations
    there, so a change of one value gets programs of its own, and still works."""
    def policy(first: str) -> str:
        binaries = [first] + [f"/nonexistent/bin{i}" for i in range(600)] + ["/usr/bin/python3", "/usr/bin/python3.11"]
        return (POLICY.format(name="api-a", value=6101)
                + "      matchBinaries:\n      - operator: In\n        values: [" + ", ".join(f'"{b}"' for b in binaries) + "]\n")

    path = tmp_path / "dir" / "a.yaml"
    path.write_text(policy("/nonexistent/first"))
    manager.reload()
    program = manager.entries[0].program
    assert len(calls(manager, 6101)) == 1
    path.write_text(policy("/nonexistent/second"))
    manager.reload()
    [a] = manager.list()
    assert a["state"] == "loaded" and manager.entries[0].program is not program
    assert program.bpf.funcs == {}   # the old programs are closed
    assert len(calls(manager, 6101)) == 1


def test_where_bcc_cannot_share_programs_each_policy_is_compiled(manager, tmp_path, monkeypatch, caplog):
    """A BCC whose libbcc lacks what instances need: policies load as before,
    each with a compile of its own, and the daemon says so once."""
    from bcc import BPF

    from tetrad import bpf_template

    def lacking():
        raise bpf_template.TemplateError("libbcc has no bpf_num_tables")

    monkeypatch.setattr(bpf_template, "_libbcc", lacking)
    manager.templates = bpf_template.TemplateCache()
    (tmp_path / "dir" / "b.yaml").write_text(POLICY.format(name="api-b", value=6106))
    (tmp_path / "dir" / "c.yaml").write_text(POLICY.format(name="api-c", value=6107))
    manager.reload()
    assert [p["state"] for p in manager.list()] == ["loaded"] * 3
    for e in manager.entries[1:]:
        assert type(e.program.bpf) is BPF and e.program.compile_s > 0
    assert len(calls(manager, 6106)) == 1 and len(calls(manager, 6107)) == 1
    assert caplog.text.count("BCC cannot make instances of a compiled program") == 1
