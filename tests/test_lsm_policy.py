"""lsmhooks policies and Override, as the running kernel allows them.

On a kernel with BPF LSM (the kernel lane's Debian guest) an `lsmhooks:` policy
on file_open evaluates its selectors in BPF LSM programs: a path under one
prefix is denied with Override's error (the open fails, the file's bytes are
never read) and reported as KPROBE_ACTION_OVERRIDE, a path under another is
reported and allowed, anything else is untouched; monitor mode reports and
denies nothing; and nothing stays denied once the daemon stops.  On a kernel
without BPF LSM (the development machines) the same policy is refused with
the reason.  Override on a syscall: tests/test_lsm_override.py.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from conftest import tetrad_cmd
from policytools import start_with_policies, status, wait_policies
from tetrad import features as features_mod
from tetrad.encoder.compact import CompactEncoder

FEATURES = features_mod.detect()


def lsm_policy(name: str, deny: str, watch: str, nowrite: str) -> str:
    return f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  lsmhooks:
  - hook: "file_open"
    message: "file opened"
    args:
    - index: 0
      type: "file"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Prefix"
        values: ["{deny}"]
      matchActions:
      - action: Override
        argError: -1
    - matchArgs:
      - index: 0
        operator: "Prefix"
        values: ["{watch}"]
  - hook: "file_permission"
    args:
    - index: 0
      type: "file"
    - index: 1
      type: "int"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Prefix"
        values: ["{nowrite}"]
      - index: 1
        operator: "Mask"
        values: ["2"]
      matchActions:
      - action: Override
        argError: -13
"""


@pytest.fixture
def dirs(tmp_path):
    """deny/, watch/, nowrite/ and other/ under a fresh directory, each with a file holding a secret."""
    out = {}
    for name in ("deny", "watch", "nowrite", "other"):
        d = tmp_path / "files" / name
        d.mkdir(parents=True)
        (d / "f").write_text(f"secret of {name}")
        out[name] = d
    return out


def read(path) -> str:
    with open(path) as f:
        return f.read()


def lsm_events(d, path: str, hook: str = "file_open") -> list[dict]:
    return [e["process_lsm"] for e in d.events() if "process_lsm" in e
            and e["process_lsm"]["process"]["pid"] == os.getpid()
            and e["process_lsm"]["function_name"] == hook
            and e["process_lsm"]["args"][0]["file_arg"]["path"] == path]


def test_lsmhooks_deny_report_or_are_refused_with_the_reason(tmp_path, dirs):
    d = start_with_policies(tmp_path / "d", {"lsm.yaml": lsm_policy(
        "lsm-open", f"{dirs['deny']}/", f"{dirs['watch']}/", f"{dirs['nowrite']}/")}, timeout=300)
    try:
        [pol] = status(d)["policies"]
        if not FEATURES.bpf_lsm:
            assert pol["state"] == "error", pol
            assert pol["error"].startswith(
                'lsm.yaml[0]: spec.lsmhooks[0].hook: lsmhook "file_open": BPF LSM unavailable: '), pol
            assert FEATURES.notes["bpf_lsm"] in pol["error"], pol
            assert "a kprobe cannot deny, so lsmhooks are not emulated" in pol["error"], pol
            assert read(dirs["deny"] / "f") == "secret of deny"   # nothing was loaded to deny it
            return
        assert pol["state"] == "loaded", pol
        assert [h["backend"] for h in pol["hooks"]] == ["bpf-lsm", "bpf-lsm"], pol
        denied, watched, other = (str(dirs[n] / "f") for n in ("deny", "watch", "other"))
        with pytest.raises(PermissionError) as exc:
            read(denied)
        assert exc.value.errno == errno.EPERM
        assert read(watched) == "secret of watch"
        assert read(other) == "secret of other"
        [ev] = d.wait_for(lambda _: lsm_events(d, denied), what="the denied open's event")
        assert ev["function_name"] == "file_open" and ev["policy_name"] == "lsm-open"
        assert ev["action"] == "KPROBE_ACTION_OVERRIDE" and ev["message"] == "file opened"
        assert ev["process"]["binary"] and "return" not in ev
        [ev] = d.wait_for(lambda _: lsm_events(d, watched), what="the watched open's event")
        assert ev["action"] == "KPROBE_ACTION_POST"
        assert lsm_events(d, other) == []
        line = CompactEncoder().encode({"process_lsm": ev, "node_name": "n", "time": "t"})
        assert line.startswith("\U0001F512 LSM ") and line.endswith(" file_open"), line

        # file_permission with MAY_WRITE: the open succeeds, the write fails with
        # argError (EACCES) and the file keeps its bytes; reading it is not denied
        unwritten = str(dirs["nowrite"] / "f")
        fd = os.open(unwritten, os.O_WRONLY)
        try:
            with pytest.raises(PermissionError) as exc:
                os.write(fd, b"overwritten")
            assert exc.value.errno == errno.EACCES
        finally:
            os.close(fd)
        assert read(unwritten) == "secret of nowrite"
        [ev] = d.wait_for(lambda _: lsm_events(d, unwritten, "file_permission"), what="the denied write's event")
        assert ev["action"] == "KPROBE_ACTION_OVERRIDE" and ev["args"][1] == {"int_arg": 2}

        # monitor mode: the same open goes through and is reported as what would have been done
        subprocess.run(tetrad_cmd() + ["tracingpolicy", "set-mode", "lsm-open", "monitor",
                                       f"--server-address=unix://{d.sock}", "--timeout=300"], check=True)
        wait_policies(d, 1, timeout=300,
                      pred=lambda ps: ps[0].get("mode") == "monitor" and ps[0]["state"] == "loaded")
        assert read(denied) == "secret of deny"
        monitored = d.wait_for(lambda _: [e for e in lsm_events(d, denied) if "monitor mode" in e["message"]],
                               what="the monitor-mode event")
        assert monitored[0]["action"] == "KPROBE_ACTION_OVERRIDE"
    finally:
        assert d.stop() == 0
    # fail-open: the LSM programs went with the daemon
    assert read(dirs["deny"] / "f") == "secret of deny"

