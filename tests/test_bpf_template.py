"""tetrad/bpf_template.py on the real kernel: instances of one compile of
bpf/policy.c have maps of their own, their programs pass the verifier and use
those maps, and the template keeps no map of its own alive."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess

import pytest

from tetrad import offsets
from tetrad.bpf_template import PSEUDO_MAP_FD, TemplateCache
from tetrad.btf import Btf


@pytest.fixture(scope="module")
def macros():
    return {**offsets.resolve(Btf.load("/sys/kernel/btf/vmlinux"),
                              offsets.PROCESS_MEMBERS + offsets.POLICY_MEMBERS),
            "RB_PAGES": 8, "NHOOKS": 4}


def map_ids_of(prog_fd: int) -> set[int]:
    prog_id = next(int(line.split()[1]) for line in open(f"/proc/self/fdinfo/{prog_fd}")
                   if line.startswith("prog_id:"))
    shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                                      capture_output=True, text=True, check=True).stdout)
    return set(shown.get("map_ids", []))


def map_id(fd: int) -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/self/fdinfo/{fd}") if line.startswith("map_id:"))


def test_instances_share_one_compile_and_nothing_else(macros):
    from bcc import BPF
    cache = TemplateCache()
    a, compiled_a = cache.instance("policy.c", macros)
    b, compiled_b = cache.instance("policy.c", macros)
    try:
        assert compiled_a > 0 and compiled_b == 0.0   # the second one did not compile

        # maps of their own
        a["settings"][ctypes.c_int(1)] = ctypes.c_uint32(1111)
        b["settings"][ctypes.c_int(1)] = ctypes.c_uint32(2222)
        assert a["settings"][ctypes.c_int(1)].value == 1111
        assert b["settings"][ctypes.c_int(1)].value == 2222
        assert sum(a["lost_records"][ctypes.c_int(0)]) == 0   # per-CPU tables keep their shape

        # the same instructions but for the maps they load, which are each instance's own
        code_a, code_b = a.dump_func(b"tp_select"), b.dump_func(b"tp_select")
        assert len(code_a) == len(code_b)
        differ = {off for off in range(0, len(code_a), 8) if code_a[off:off + 8] != code_b[off:off + 8]}
        assert differ
        assert all(code_a[off] == 0x18 and code_a[off + 1] >> 4 == PSEUDO_MAP_FD for off in differ)

        ids_a = {map_id(fd) for fd in a.map_fds}
        ids_b = {map_id(fd) for fd in b.map_fds}
        assert not ids_a & ids_b
        fn_a = a.load_func(b"tp_select", BPF.TRACEPOINT)   # the verifier accepts the relocated code
        fn_b = b.load_func(b"tp_select", BPF.TRACEPOINT)
        assert map_ids_of(fn_a.fd) <= ids_a and map_ids_of(fn_b.fd) <= ids_b
        assert map_ids_of(fn_a.fd)

        # the template's maps are gone: their fds are /dev/null
        template = a.template
        assert all(os.readlink(f"/proc/self/fd/{spec.fd}") == "/dev/null" for spec in template.tables.values())
    finally:
        a.cleanup()
        b.cleanup()
    assert template.instances == 0
    c, compiled_c = cache.instance("policy.c", macros)   # the template outlives its instances
    c.cleanup()
    assert compiled_c == 0.0
    cache.close()
    assert template.destroyed


def test_other_macros_are_another_template(macros):
    cache = TemplateCache()
    a, _ = cache.instance("policy.c", macros)
    b, compiled = cache.instance("policy.c", {**macros, "NHOOKS": 16})
    try:
        assert compiled > 0 and a.template is not b.template
        assert b.dump_func(b"hook15_enter")
        with pytest.raises(Exception, match="Unknown program"):
            a.dump_func(b"hook15_enter")
    finally:
        a.cleanup()
        b.cleanup()
        cache.close()
