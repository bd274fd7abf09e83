"""The start-up self-test catches wrong struct offsets, on the real kernel."""

from __future__ import annotations

import pytest

from tetrad import offsets, selftest
from tetrad.btf import Btf
from tetrad.features import detect
from tetrad.sensors.process import ProcessSensor


@pytest.fixture(scope="module")
def macros():
    return offsets.resolve(Btf.load())


@pytest.fixture(scope="module")
def cgroup_root():
    return detect(quick=True).cgroup_v2_root


def run_selftest(macros, cgroup_root):
    sensor = ProcessSensor(macros, rb_pages=64)
    records = []
    sensor.open(records.append)
    try:
        return selftest.run(sensor, lambda ms: (sensor.poll(ms), records)[1], cgroup_root)
    finally:
        sensor.close()


def test_correct_offsets_pass(macros, cgroup_root):
    observed = run_selftest(macros, cgroup_root)
    assert observed["cgroup_id"] > 0 and observed["cwd"].startswith("/")


# Each wrong offset points at a neighbour holding a different value (a
# neighbour with the same value, e.g. task_struct.parent next to real_parent,
# is indistinguishable by any self-test, and harmless for the same reason).
@pytest.mark.parametrize("macro, wrong_as, field", [
    ("OFF_task_struct__real_parent", "+16", "ppid"),
    ("OFF_task_struct__loginuid", "+8", "auid"),
    ("OFF_fs_struct__pwd_dentry", "+8", "cwd"),
    ("OFF_kernfs_node__id", "+8", "cgroup_id"),
    ("OFF_cred__uid", "OFF_cred__cap_effective", "uid"),
])
def test_a_wrong_offset_is_caught_and_named(macros, cgroup_root, macro, wrong_as, field):
    wrong = dict(macros)
    wrong[macro] = macros[macro] + int(wrong_as) if wrong_as.startswith("+") else macros[wrong_as]
    with pytest.raises(selftest.SelfTestError) as err:
        run_selftest(wrong, cgroup_root)
    assert f"{field}: BPF read" in str(err.value)


def test_resolve_fails_clearly_on_missing_member():
    btf = Btf.load()
    bogus = offsets.PROCESS_MEMBERS + (offsets.Member("task_struct", "no_such_member"),)
    with pytest.raises(offsets.OffsetError) as err:
        offsets.resolve(btf, bogus)
    assert "no_such_member" in str(err.value)
