"""The backend rule (tetrad/backends.py): unit cases on made-up kernels, and `tetrad probe`
on the running kernel checked against independent evidence (the kprobe PMU, the LSM list).
In the kernel lane's guest KERNEL_LANE_EXPECT_HOOKS names what Debian's kernel must offer."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import tetrad_cmd
from tetrad import backends
from tetrad.features import Features

EXPECTED = set(filter(None, os.environ.get("KERNEL_LANE_EXPECT_HOOKS", "").split(",")))


def kernel(**caps) -> Features:
    """A kernel with tracepoints and the given extra capabilities; others noted missing."""
    f = Features(kernel_release="test", tracefs="/sys/kernel/tracing", tracepoints=True,
                 syscall_tracepoints=True, raw_tracepoints=True, uprobes=True)
    for name in ("kprobes", "kretprobes", "fentry", "bpf_lsm"):
        setattr(f, name, caps.get(name, False))
        if not caps.get(name):
            f.notes[name] = f"{name} missing here"
    return f


DISTRO = kernel(kprobes=True, kretprobes=True, fentry=True, bpf_lsm=True)
STRIPPED = kernel()
FENTRY_ONLY = kernel(fentry=True)


def test_distro_kernel_gets_kprobes_and_lsm():
    c = backends.choose(DISTRO, "kprobe", "sys_write", syscall=True)
    assert (c.backend, c.target, c.reason) == ("kprobe", backends.syscall_function("write"), "preferred")
    assert backends.choose(DISTRO, "kprobe", "fd_install").backend == "kprobe"
    assert backends.choose(DISTRO, "kretprobe", "fd_install").backend == "kretprobe"
    assert backends.choose(DISTRO, "lsm", "file_open").backend == "bpf_lsm"


def test_without_kprobes_syscalls_use_their_tracepoints():
    c = backends.choose(STRIPPED, "kprobe", "sys_write", syscall=True)
    assert (c.backend, c.target) == ("tracepoint", "syscalls:sys_enter_write")
    assert "kprobes missing here" in c.reason   # says why the better backends were not used
    r = backends.choose(STRIPPED, "kretprobe", "__x64_sys_openat", syscall=True)
    assert (r.backend, r.target) == ("tracepoint", "syscalls:sys_exit_openat")


def test_without_kprobes_known_functions_use_an_equivalent_and_say_how_it_differs():
    c = backends.choose(STRIPPED, "kprobe", "tcp_connect")   # the policy engine's equivalent
    assert (c.backend, c.target) == ("tracepoint", "syscalls:sys_enter_connect, syscalls:sys_exit_connect")
    assert "4-tuple" in c.reason
    # an equivalent passed by the caller (the policy engine's own table)
    mine = backends.choose(STRIPPED, "kprobe", "do_unlinkat",
                           equivalents={"do_unlinkat": ("syscalls:sys_enter_unlinkat", "by path")})
    assert mine.target == "syscalls:sys_enter_unlinkat"


def test_without_kprobes_other_functions_are_refused_with_every_reason():
    c = backends.choose(STRIPPED, "kprobe", "vfs_read")
    assert c.backend is None and c.target == ""
    for why in ("kprobes missing here", "fentry missing here", "no tracepoint equivalent of vfs_read"):
        assert why in c.reason


def test_the_engine_attaches_fentry_where_kprobes_are_missing_and_when_forced():
    c = backends.choose(FENTRY_ONLY, "kprobe", "fd_install", families=backends.ENGINE_FAMILIES)
    assert c.backend == "fentry" and "kprobes missing here" in c.reason
    forced = backends.choose(DISTRO, "kprobe", "sys_read", syscall=True, force="fentry",
                             families=backends.ENGINE_FAMILIES)
    assert (forced.backend, forced.target) == ("fentry", backends.syscall_function("read"))
    assert backends.choose(DISTRO, "kprobe", "fd_install", families=backends.ENGINE_FAMILIES).backend == "kprobe"
    # a caller that attaches fewer families is told so
    narrow = backends.choose(DISTRO, "kprobe", "fd_install", force="fentry", families=("kprobe", "tracepoint"))
    assert narrow.backend is None
    assert narrow.reason == "hook-backend=fentry forced, but tetrad's policy engine has no fentry backend yet"


@pytest.mark.parametrize("feats", [DISTRO, STRIPPED, FENTRY_ONLY], ids=["distro", "stripped", "fentry-only"])
@pytest.mark.parametrize("force", ["auto", "kprobe", "fentry", "tracepoint"])
def test_probe_preview_and_the_engine_plan_agree(feats, force):
    """`tetrad probe` (summary) and the policy engine (hooks.plan) make one decision."""
    from tetrad.policy import hooks
    from tetrad.policy.model import Arg, Hook
    engine_backend = {"kprobe": ("kprobe",), "kretprobe": ("kprobe",),
                      "fentry": ("fentry",), "fexit": ("fentry",),
                      "tracepoint": ("syscall-tracepoints", "tracepoint-equivalent")}
    for c in backends.summary(feats, force=force):
        if c.kind not in ("kprobe", "kretprobe"):
            continue
        ret = Arg(0, "int") if c.kind == "kretprobe" else None
        hook = Hook("kprobe", c.name, "spec.kprobes[0]", syscall=c.name.startswith("sys_"), return_arg=ret)
        try:
            planned = hooks.plan(hook, feats, force)
        except hooks.PlanError as e:
            assert c.backend is None, f"{c}: the engine refused it: {e}"
            continue
        assert c.backend is not None, f"{c}: the engine planned {planned}"
        assert planned.backend in engine_backend[c.backend], (c, planned)
        if planned.backend == "fentry":   # at the function probe shows, at the end it shows
            [(kind, target, _)] = planned.attach
            assert target == c.target
            assert kind == ("fexit" if c.kind == "kretprobe" else "fentry"), (c, planned)


def test_fentry_serves_when_kprobes_are_missing_but_only_for_btf_functions():
    assert backends.choose(FENTRY_ONLY, "kprobe", "fd_install").backend == "fentry"
    assert backends.choose(FENTRY_ONLY, "kretprobe", "fd_install").backend == "fexit"
    c = backends.choose(FENTRY_ONLY, "kprobe", "static_helper", in_btf=False)
    assert c.backend is None and "static_helper has no BTF FUNC record" in c.reason


def test_forcing_a_backend_never_falls_back_silently():
    assert backends.choose(DISTRO, "kprobe", "fd_install", force="fentry").backend == "fentry"
    t = backends.choose(DISTRO, "kprobe", "sys_write", syscall=True, force="tracepoint")
    assert (t.backend, t.target, t.reason) == ("tracepoint", "syscalls:sys_enter_write",
                                               "forced by hook-backend=tracepoint")
    refused = backends.choose(STRIPPED, "kprobe", "sys_write", syscall=True, force="kprobe")
    assert refused.backend is None
    assert refused.reason == "hook-backend=kprobe forced, but kprobes missing here"


def test_lsm_hooks_are_refused_without_bpf_lsm():
    c = backends.choose(STRIPPED, "lsm", "file_open")
    assert c.backend is None and "bpf_lsm missing here" in c.reason


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown hook kind 'kprobes'"):
        backends.choose(DISTRO, "kprobes", "x")
    with pytest.raises(ValueError, match="unknown hook backend 'ebpf'"):
        backends.choose(DISTRO, "kprobe", "x", force="ebpf")


def test_hook_backend_flag_is_validated():
    from tetrad import config
    assert config.load({"hook-backend": "fentry"}).hook_backend == "fentry"
    with pytest.raises(config.ConfigError, match="hook-backend"):
        config.load({"hook-backend": "ebpf"})


# --- `tetrad probe` on the running kernel ------------------------------------------------

def probe_json(*flags) -> dict:
    out = subprocess.run(tetrad_cmd() + ["probe", "-o", "json", *flags],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def kprobe_pmu() -> bool:
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type")


def bpf_in_lsm_list() -> bool:
    try:
        with open("/sys/kernel/security/lsm") as fh:
            return "bpf" in fh.read().strip().split(",")
    except OSError:
        return False


@pytest.fixture(scope="module")
def probed():
    return probe_json()


def test_probe_reports_the_kernels_hooks(probed):
    feats = probed["features"]
    assert feats["probed"], feats["notes"]
    # detected, not assumed: kprobes exactly when the kernel has a kprobe PMU
    assert feats["kprobes"] == feats["kretprobes"] == kprobe_pmu()
    if not bpf_in_lsm_list():
        assert not feats["bpf_lsm"]
    for capability in EXPECTED:
        assert feats[capability], f"{capability}: {feats['notes'].get(capability)}"


def test_probe_shows_the_backend_chosen_per_hook_kind(probed):
    choices = {(c["kind"], c["name"]): c for c in probed["backends"]["choices"]}
    assert probed["backends"]["hook_backend"] == "auto"
    syscall, function = choices[("kprobe", "sys_write")], choices[("kprobe", "fd_install")]
    lsm = choices[("lsm", "file_open")]
    if kprobe_pmu():
        assert (syscall["backend"], function["backend"]) == ("kprobe", "kprobe")
        assert choices[("kretprobe", "fd_install")]["backend"] == "kretprobe"
    else:
        assert (syscall["backend"], syscall["target"]) == ("tracepoint", "syscalls:sys_enter_write")
        assert choices[("kprobe", "tcp_connect")]["backend"] == "tracepoint"
        # the policy engine's equivalent: the exits of the open syscalls
        assert function["backend"] == "tracepoint" and "syscalls:sys_exit_openat" in function["target"]
    assert lsm["backend"] == ("bpf_lsm" if probed["features"]["bpf_lsm"] else None)
    if "bpf_lsm" in EXPECTED:
        assert lsm["backend"] == "bpf_lsm"


def test_probe_text_names_backend_and_reason():
    """Forced onto fentry: served where the kernel has it (the lane's guest), refused with
    the reason where not (our hosts)."""
    out = subprocess.run(tetrad_cmd() + ["probe", "--hook-backend=fentry"],
                         capture_output=True, text=True, check=True).stdout
    assert "Backends (hook-backend=fentry)" in out
    lines = {l.strip().split("  ")[0]: l for l in out.splitlines() if l.startswith("  k")}
    detected = next(l for l in out.splitlines() if l.strip().startswith("fentry ")).split()[1] == "yes"
    if detected or "fentry" in EXPECTED:
        assert "fentry __x64_sys_write: forced by hook-backend=fentry" in lines["kprobe sys_write"]
        assert "fexit fd_install: forced by hook-backend=fentry" in lines["kretprobe fd_install"]
    else:
        assert "REFUSED: hook-backend=fentry forced, but " in lines["kprobe sys_write"]


def test_fentry_plans_read_the_functions_btf_signature():
    """The engine's fentry plan (on this machine's BTF): arguments by their BTF size and
    sign, the return value after them, fexit alone for a traced return; an index past
    the function's arguments or a function without BTF is refused with the reason."""
    from tetrad.policy import hooks
    from tetrad.policy.model import Arg, Hook
    ret = Arg(0, "int")
    plan = hooks.plan(Hook("kprobe", "fd_install", "spec.kprobes[0]", args=(Arg(0, "int"), Arg(1, "file"))),
                      FENTRY_ONLY)
    assert (plan.backend, plan.attach, plan.syscall_wrapper) == ("fentry", [("fentry", "fd_install", hooks.ENTER)], False)
    assert plan.proto.params == ((4, False), (8, False)) and plan.proto.ret == (0, False)   # void
    sys_read = hooks.plan(Hook("kprobe", "sys_read", "spec.kprobes[0]", syscall=True, return_arg=ret), FENTRY_ONLY)
    assert sys_read.attach == [("fexit", backends.syscall_function("read"), hooks.EXIT)] and sys_read.syscall_wrapper
    assert sys_read.proto.ret == (8, True)
    with pytest.raises(hooks.PlanError, match=r'kprobe "tty_write": tty_write has 2 arguments \(BTF\), no index 2'):
        hooks.plan(Hook("kprobe", "tty_write", "spec.kprobes[0]", args=(Arg(2, "int"),)), FENTRY_ONLY)
    with pytest.raises(hooks.PlanError, match='no fentry: not_a_kernel_function has no BTF FUNC record'):
        hooks.plan(Hook("kprobe", "not_a_kernel_function", "spec.kprobes[0]"), FENTRY_ONLY)
