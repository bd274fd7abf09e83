"""`tetrad probe` and `tetrad version` as a user runs them."""

from __future__ import annotations

import json
import subprocess

from conftest import tetrad_cmd


def run(*args):
    return subprocess.run(tetrad_cmd() + list(args), capture_output=True, text=True, timeout=60)


def test_probe_json_describes_this_kernel():
    out = run("probe", "-o", "json", "--server-address=unix:///nonexistent/tetrad.sock")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    feats = info["features"]
    assert feats["raw_tracepoints"] is True
    assert feats["kernel_release"]
    # every capability the kernel lacks comes with a reason
    for name, value in feats.items():
        if value is False:
            assert feats["notes"].get(name), f"no reason given for {name}"
    assert info["offsets"]["resolved"] > 50 and not info["offsets"]["error"]
    assert "raw tracepoints" in info["hooks"]["process events"]
    assert info["daemon"] is None


def test_probe_text_with_a_running_daemon(daemon):
    out = run("probe", f"--server-address=unix://{daemon.sock}")
    assert out.returncode == 0, out.stderr
    assert "Kernel features" in out.stdout and "Hooks chosen" in out.stdout
    assert f"running, pid {daemon.proc.pid}" in out.stdout
    assert "lost in kernel:" in out.stdout


def test_version():
    out = run("version")
    assert out.returncode == 0 and out.stdout.startswith("tetrad ")
