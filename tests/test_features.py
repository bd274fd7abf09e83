"""Tests for tetrad.features and tetrad.kheaders against the real kernel.

The assertions about detected capabilities compare with independent evidence (sysfs, tracefs,
/proc/mounts, /proc/kallsyms, `bpftool feature probe`) rather than with one machine's answers.
That way the same tests describe the development kernel (6.18: no kprobes, fentry/LSM refused)
and a distro kernel (Debian 6.1: kprobes, fentry, BPF LSM).  Mount experiments run in a
private mount namespace (unshare -m), so the shared machine is left alone.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import TIMEOUT_SCALE
from tetrad import features, kheaders
from tetrad.features import CAPABILITIES, LOAD_BASED, detect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Kernel-side names of the probe programs: "tdp_*", plus the names libbcc derives from
# kfunc__vfs_read, lsm__file_open and bpf_iter__task.
PROBE_PROG_NAMES = ("vfs_read", "file_open", "task")


def bpf_progs() -> dict[int, str]:
    out = subprocess.run(["bpftool", "prog", "list", "-j"], check=True,
                         capture_output=True, text=True).stdout
    return {p["id"]: p.get("name", "") for p in json.loads(out or "[]")}


def our_new_progs(before: dict[int, str]) -> dict[int, str]:
    """Probe programs that appeared since `before`, waiting out the kernel's deferred free
    (a detached raw tracepoint program lingers for an RCU grace period, ~20 ms)."""
    deadline = time.monotonic() + 2
    while True:
        ours = {i: n for i, n in bpf_progs().items() if i not in before
                and (n.startswith("tdp_") or n in PROBE_PROG_NAMES)}
        if not ours or time.monotonic() > deadline:
            return ours
        time.sleep(0.02)


def bpf_fds() -> list[str]:
    """This process's fds on BPF programs, maps, links and perf events."""
    fd_dir = "/proc/self/fd"
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:
            continue
    return sorted(t for t in targets if "bpf" in t or "perf_event" in t)


def kallsyms_has(name: str) -> bool:
    with open("/proc/kallsyms") as fh:
        return f" {name}\n" in fh.read()


def cgroup2_mount() -> str:
    with open("/proc/mounts") as fh:
        points = [line.split()[1] for line in fh if line.split()[2] == "cgroup2"]
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in points:
            return preferred
    return points[0] if points else ""


def run_in_private_mount_ns(script: str) -> subprocess.CompletedProcess:
    """Run a Python script in a private mount namespace (mounts there vanish with it)."""
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    return subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           textwrap.dedent(script)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def full():
    progs_before, fds_before = bpf_progs(), bpf_fds()
    start = time.monotonic()
    f = detect()
    elapsed = time.monotonic() - start
    return f, elapsed, fds_before, bpf_fds(), our_new_progs(progs_before)


@pytest.fixture(scope="module")
def bpftool_probe():
    out = subprocess.run(["bpftool", "feature", "probe", "kernel", "-j"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


# --- full detection on the real kernel ----------------------------------------------------

def test_full_detect_is_probed_and_fast(full):
    f, elapsed, *_ = full
    assert f.probed
    assert f.kernel_release == os.uname().release
    assert elapsed < 1.5 * TIMEOUT_SCALE, f"detect() took {elapsed:.2f} s"


def test_file_facts_match_the_system(full):
    f = full[0]
    with open("/proc/mounts") as fh:
        tracefs_mounts = [line.split()[1] for line in fh if line.split()[2] == "tracefs"]
    assert f.tracefs in tracefs_mounts
    assert f.btf == os.path.isfile("/sys/kernel/btf/vmlinux")
    assert f.tracepoints == os.path.exists(f"{f.tracefs}/events/sched/sched_process_exec/format")
    assert f.syscall_tracepoints == os.path.exists(f"{f.tracefs}/events/syscalls/sys_enter_openat")
    assert f.cgroup_v2_root == cgroup2_mount()
    with open("/sys/kernel/security/lsm") as fh:
        assert f.lsm_list == fh.read().strip()


def test_capabilities_every_target_kernel_has(full):
    # Documented for both the 6.18 development kernel and Debian 6.1.
    f = full[0]
    for name in ("btf", "tracepoints", "syscall_tracepoints", "raw_tracepoints", "ringbuf",
                 "send_signal", "uprobes", "cgroup_sock_addr", "task_iter"):
        assert getattr(f, name) is True, f"{name}: {f.notes.get(name)}"
    assert f.cgroup_v2_root and f.tracefs and f.kernel_headers


def test_kprobes_agree_with_sysfs_and_tracefs(full):
    f = full[0]
    kprobe_support = (os.path.exists("/sys/bus/event_source/devices/kprobe/type")
                      or os.path.exists(f"{f.tracefs}/kprobe_events"))
    assert f.kprobes == kprobe_support
    assert f.kretprobes == kprobe_support
    assert f.override_return == (kprobe_support and kallsyms_has("bpf_override_return"))
    uprobe_support = (os.path.exists("/sys/bus/event_source/devices/uprobe/type")
                      or os.path.exists(f"{f.tracefs}/uprobe_events"))
    assert f.uprobes == uprobe_support


def test_load_based_results_agree_with_bpftool(full, bpftool_probe):
    f = full[0]
    prog_types, map_types = bpftool_probe["program_types"], bpftool_probe["map_types"]
    assert f.fentry == prog_types["have_tracing_prog_type"]
    assert f.bpf_lsm == ("bpf" in f.lsm_list.split(",") and prog_types["have_lsm_prog_type"])
    assert f.raw_tracepoints == prog_types["have_raw_tracepoint_prog_type"]
    assert f.cgroup_sock_addr == prog_types["have_cgroup_sock_addr_prog_type"]
    assert f.ringbuf == map_types["have_ringbuf_map_type"]
    assert f.send_signal == kallsyms_has("bpf_send_signal")


def test_every_negative_has_a_reason(full):
    f = full[0]
    for name in CAPABILITIES:
        if not getattr(f, name):
            assert f.notes.get(name), f"{name} is negative without a reason"
    # On this kernel fentry/LSM programs are refused at load: the reason must say so.
    if f.btf and not f.fentry:
        assert f.notes["fentry"].startswith("load refused: ")


def test_no_probe_program_left_behind(full):
    _, _, fds_before, fds_after, leftovers = full
    assert fds_after == fds_before
    assert leftovers == {}


def test_report_formats(full):
    f = full[0]
    data = json.loads(json.dumps(f.to_dict()))
    assert set(CAPABILITIES) <= set(data) and isinstance(data["notes"], dict)
    lines = f.summary_lines()
    assert len(lines) == 1 + len(CAPABILITIES) + len(f.mounted)
    for name, line in zip(CAPABILITIES, lines[1:]):
        assert line.split()[:2] == [name, "yes" if getattr(f, name) else "no"]
        if not getattr(f, name):
            assert f.notes[name] in line


# --- quick detection ------------------------------------------------------------------------

def test_quick_is_fast_and_agrees_on_file_facts(full):
    f = full[0]
    start = time.monotonic()
    q = detect(quick=True)
    elapsed = time.monotonic() - start
    assert elapsed < 0.3 * TIMEOUT_SCALE, f"quick detect() took {elapsed:.2f} s"
    assert not q.probed
    for name in ("kernel_release", "btf", "btf_path", "tracefs", "tracepoints",
                 "syscall_tracepoints", "lsm_list", "cgroup_v2_root", "kernel_headers",
                 "kprobes", "kretprobes", "uprobes"):
        assert getattr(q, name) == getattr(f, name), name
    for name in LOAD_BASED:
        assert getattr(q, name) or q.notes.get(name), name


# --- failures never escape ------------------------------------------------------------------

def test_missing_headers_does_not_raise(monkeypatch):
    def no_headers():
        raise kheaders.KernelHeadersError("apt-get install linux-headers-amd64")
    monkeypatch.setattr(kheaders, "ensure", no_headers)
    f = detect()
    assert not f.probed and f.kernel_headers == ""
    assert "apt-get install" in f.notes["kernel_headers"]
    for name in LOAD_BASED:
        assert getattr(f, name) is False and f.notes[name]


def test_refused_ring_buffer_does_not_sink_other_probes(monkeypatch):
    # A 3-page ring buffer is invalid (not a power of two): the kernel refuses the map.
    monkeypatch.setattr(features, "PROBE_RINGBUF", "BPF_RINGBUF_OUTPUT(tdp_ringbuf, 3);\n")
    f = detect()
    assert f.probed and not f.ringbuf
    assert f.notes["ringbuf"].startswith("ring buffer map refused")
    assert f.raw_tracepoints and f.send_signal


def test_missing_btf_blocks_btf_based_probes(full):
    f = detect(btf_path="/nonexistent/vmlinux")
    assert not f.btf and "no kernel BTF" in f.notes["btf"]
    for name in ("fentry", "task_iter"):
        assert not getattr(f, name) and f.notes[name] == "needs kernel BTF"
    assert f.raw_tracepoints == full[0].raw_tracepoints


def test_mounts_tracefs_and_securityfs_when_missing():
    proc = run_in_private_mount_ns("""
        import json, subprocess
        for point in ("/sys/kernel/debug/tracing", "/sys/kernel/tracing", "/sys/kernel/security"):
            subprocess.run(["umount", point], capture_output=True)
        from tetrad.features import detect
        print(json.dumps(detect(quick=True).to_dict()))
    """)
    assert proc.returncode == 0, proc.stderr
    f = json.loads(proc.stdout)
    assert f["tracefs"] == "/sys/kernel/tracing" and f["tracepoints"]
    assert "tracefs at /sys/kernel/tracing" in f["mounted"]
    assert "securityfs at /sys/kernel/security" in f["mounted"] and f["lsm_list"]


# --- kheaders -------------------------------------------------------------------------------

def make_tree(root, name, source=False, generated=False, release=None, makefile=None):
    tree = root / name
    (tree / "include").mkdir(parents=True)
    if source:
        (tree / "include/linux").mkdir()
        (tree / "include/linux/kconfig.h").write_text("")
    if generated:
        (tree / "include/generated").mkdir()
        (tree / "include/generated/autoconf.h").write_text("")
        (tree / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    if makefile:
        (tree / "Makefile").write_text(f"include {makefile}/Makefile\n")
    return tree


def make_debian_split(usr_src, ver, flavour="amd64"):
    common = make_tree(usr_src, f"linux-headers-{ver}-common", source=True)
    return make_tree(usr_src, f"linux-headers-{ver}-{flavour}", generated=True,
                     release=f"{ver}-{flavour}", makefile=common), common


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    # set, then delete: monkeypatch then restores the variable's absence too,
    # so what ensure() sets here cannot leak into later tests' daemons
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    monkeypatch.setattr(kheaders, "KHEADERS_TAR", str(tmp_path / "no-kheaders.tar.xz"))
    (tmp_path / "modules").mkdir()
    (tmp_path / "src").mkdir()
    return tmp_path


def test_kheaders_real_system():
    desc = kheaders.ensure()
    tree = os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{os.uname().release}/build"
    with open(f"{tree}/include/generated/utsrelease.h") as fh:
        matching = f'"{os.uname().release}"' in fh.read()
    assert desc.startswith("matching headers" if matching else "fallback headers")


def test_kheaders_split_layout_makes_symlinks(scratch):
    make_debian_split(scratch / "src", "6.1.0-50")
    newest, common = make_debian_split(scratch / "src", "6.1.0-56")
    make_debian_split(scratch / "src", "6.1.0-60", flavour="arm64")
    desc = kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                           release="9.9.9-test", machine="x86_64")
    kdir = scratch / "modules/9.9.9-test"
    assert os.readlink(kdir / "build") == str(newest)
    assert os.readlink(kdir / "source") == str(common)
    assert desc.startswith("fallback headers (not the running kernel's): ")
    assert str(newest) in desc and "BCC_KERNEL_SOURCE" not in os.environ
    # Idempotent: the second call sees the links and reports them.
    again = kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                            release="9.9.9-test", machine="x86_64")
    assert again.startswith("fallback headers") and str(newest) in again


def test_kheaders_picks_the_arch_flavour(scratch):
    make_debian_split(scratch / "src", "6.1.0-56")
    arm, _ = make_debian_split(scratch / "src", "6.1.0-50", flavour="arm64")
    kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                    release="9.9.9-test", machine="aarch64")
    assert os.readlink(scratch / "modules/9.9.9-test/build") == str(arm)


def test_kheaders_replaces_dangling_symlinks(scratch):
    tree, _ = make_debian_split(scratch / "src", "6.1.0-56")
    kdir = scratch / "modules/9.9.9-test"
    kdir.mkdir()
    os.symlink(str(scratch / "src/removed-amd64"), kdir / "build")
    kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                    release="9.9.9-test", machine="x86_64")
    assert os.readlink(kdir / "build") == str(tree)


def test_kheaders_single_tree_uses_env(scratch, monkeypatch):
    tree = make_tree(scratch / "src", "linux-headers-7.0.0-1-amd64", source=True,
                     generated=True, release="7.0.0-1-amd64")
    desc = kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                           release="9.9.9-test", machine="x86_64")
    assert os.environ["BCC_KERNEL_SOURCE"] == str(tree)
    assert desc.startswith("fallback headers") and not (scratch / "modules/9.9.9-test").exists()


def test_kheaders_matching_build(scratch):
    build = make_tree(scratch / "src", "linux-headers-9.9.9-test", source=True,
                      generated=True, release="9.9.9-test")
    (scratch / "modules/9.9.9-test").mkdir()
    os.symlink(build, scratch / "modules/9.9.9-test/build")
    desc = kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                           release="9.9.9-test", machine="x86_64")
    assert desc.startswith("matching headers: ") and str(build) in desc


def test_kheaders_rejects_incomplete_env(scratch, monkeypatch):
    common = make_tree(scratch / "src", "linux-headers-6.1.0-56-common", source=True)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(common))
    with pytest.raises(kheaders.KernelHeadersError, match="not a complete header tree"):
        kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                        release="9.9.9-test", machine="x86_64")


def test_kheaders_nothing_available(scratch):
    with pytest.raises(kheaders.KernelHeadersError, match="apt-get install linux-headers-amd64"):
        kheaders.ensure(modules_dir=str(scratch / "modules"), usr_src=str(scratch / "src"),
                        release="9.9.9-test", machine="x86_64")


def test_kheaders_fallback_really_compiles():
    # Hide /lib/modules in a private namespace: ensure() must set up /usr/src headers from
    # scratch, and BCC must then compile and load a program.
    proc = run_in_private_mount_ns("""
        import subprocess
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/lib/modules"], check=True)
        from tetrad import kheaders
        print(kheaders.ensure())
        from bcc import BPF
        b = BPF(text="int f(void *ctx) { return 0; }")
        b.load_func("f", BPF.TRACEPOINT)
        b.cleanup()
        print("compiled")
    """)
    assert proc.returncode == 0, proc.stderr
    desc, result = proc.stdout.strip().splitlines()[-2:]
    assert result == "compiled"
    assert desc.startswith(("fallback headers", "matching headers"))
