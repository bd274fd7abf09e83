"""The kernel lane's host side (scripts/kernel-lane/run.py): what it selects for the guest
and how it judges the guest's results.  The lane itself runs in `make test-kernel`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO

spec = importlib.util.spec_from_file_location("kernel_lane", REPO / "scripts/kernel-lane/run.py")
lane = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lane)


def test_selection_names_tests_that_exist():
    paths, deselected = lane.selection()
    assert "tests/test_kernel_hooks.py" in paths and "tests/test_process_events.py" in paths
    for path in paths:
        assert (REPO / path.split("::")[0]).is_file(), path
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *paths],
                               cwd=REPO, capture_output=True, text=True).stdout.split()
    for test, reason in deselected.items():
        assert test in collected, f"tests.txt deselects {test}, which no longer exists"
        assert reason, f"tests.txt deselects {test} without a reason"


def test_selection_parsing(tmp_path):
    f = tmp_path / "tests.txt"
    f.write_text("# comment\n\ntests/a.py\n-tests/a.py::t  too slow there\ntests/b.py::u\n")
    assert lane.selection(f) == (["tests/a.py", "tests/b.py::u"], {"tests/a.py::t": "too slow there"})


def test_junit_counts_add_up_every_suite(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1"/>'
                   '<testsuite tests="2" failures="0" errors="1" skipped="0"/></testsuites>')
    assert lane.junit_counts(xml) == {"tests": 5, "failures": 1, "errors": 1, "skipped": 1}


def test_project_disk_holds_the_checkout(tmp_path):
    import tarfile
    disk = tmp_path / "project.tar"
    n = lane.write_project_disk(disk)
    assert disk.stat().st_size % 512 == 0
    with tarfile.open(disk) as tar:
        names = tar.getnames()
    assert len(names) == n
    for needed in ("scripts/kernel-lane/guest-run.sh", "bpf/hook_check.c", "tetrad/backends.py",
                   "tests/conftest.py"):
        assert needed in names
    assert not [n for n in names if n.startswith((".venv/", ".kernel-lane/", ".git/"))]
