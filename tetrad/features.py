"""Kernel feature detection: what this kernel lets tetrad do, and why not when it doesn't.

tetrad has to run on very different kernels: stripped-down ones (no kprobes, and fentry and
BPF LSM refused with EPERM although BTF is present and ``bpf`` is in the LSM list) and stock
distro kernels (kprobes, fentry, BPF LSM).  Kconfig and kallsyms only say what was compiled
in, not what this process may actually use (lockdown, LSM policy, capabilities).  So by
default ``detect()`` compiles ONE small BPF object and loads or attaches each probe program in
it, then tears everything down.  ``quick=True`` decides from files only (tracefs, sysfs,
securityfs, kallsyms, kernel config).  Every negative result carries its reason in ``notes``,
so the daemon can say why it picked a fallback.
"""

import atexit
import contextlib
import ctypes
import dataclasses
import errno
import gzip
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

from . import kheaders

__all__ = ["Features", "detect"]

TRACEFS_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
SECURITYFS = "/sys/kernel/security"
CGROUP2_PREFERRED = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
PMU_DIR = "/sys/bus/event_source/devices"

# Functions present on every kernel, used as attach targets for the probes.
KPROBE_TARGET = "vfs_read"
LSM_HOOK = "file_open"
RAW_TP_TARGET = "sched_process_exec"
UPROBE_TARGET = ("c", "getpid")

# Rows of summary_lines(), in order.  The string-valued ones count as "yes" when non-empty.
CAPABILITIES = (
    "btf", "tracefs", "tracepoints", "syscall_tracepoints", "raw_tracepoints",
    "kprobes", "kretprobes", "fentry", "bpf_lsm", "override_return", "send_signal",
    "ringbuf", "uprobes", "cgroup_sock_addr", "cgroup_v2_root", "task_iter", "kernel_headers",
)
# Quick-mode evidence: (CONFIG option, kallsyms names).  The config decides when it can be
# read, otherwise any of the symbols.  An empty entry means the file checks suffice.
QUICK_EVIDENCE = {
    "raw_tracepoints": (None, ("bpf_get_raw_tracepoint", "bpf_find_raw_tracepoint")),
    "kprobes": (None, ()),
    "kretprobes": (None, ()),
    "fentry": (None, ("bpf_trampoline_link_prog",)),
    "bpf_lsm": ("CONFIG_BPF_LSM", ("bpf_lsm_bpf",)),
    "override_return": ("CONFIG_BPF_KPROBE_OVERRIDE", ("bpf_override_return",)),
    "send_signal": (None, ("bpf_send_signal",)),
    "ringbuf": (None, ("bpf_ringbuf_output",)),
    "uprobes": (None, ()),
    "cgroup_sock_addr": ("CONFIG_CGROUP_BPF", ("__cgroup_bpf_run_filter_sock_addr",)),
    "task_iter": (None, ("bpf_iter_task",)),
}
# Decided by loading a program in full mode, from the evidence above in quick mode.
LOAD_BASED = tuple(QUICK_EVIDENCE)

# One object for all load-based probes.  Names start with "tdp_" so that leftovers are
# recognisable in `bpftool prog list`.  bpf_send_signal is only loaded, never attached.
PROBE_RINGBUF = "BPF_RINGBUF_OUTPUT(tdp_ringbuf, 1);\n"
PROBE_TEXT = f"""
struct file;
struct bpf_iter__task;
int tdp_kprobe(struct pt_regs *ctx) {{ return 0; }}
int tdp_override(struct pt_regs *ctx) {{ bpf_override_return(ctx, -1); return 0; }}
int tdp_signal(void *ctx) {{ bpf_send_signal(9); return 0; }}
int tdp_raw_tp(struct bpf_raw_tracepoint_args *ctx) {{ return 0; }}
int tdp_sock_addr(struct bpf_sock_addr *ctx) {{ return 1; }}
KFUNC_PROBE({KPROBE_TARGET}) {{ return 0; }}
LSM_PROBE({LSM_HOOK}, struct file *file) {{ return 0; }}
BPF_ITER(task) {{ return 0; }}
"""

_ERRNO_NAMES = {os.strerror(n): name for n, name in errno.errorcode.items()}


@dataclass
class Features:
    """What detect() found; notes[name] says why capability `name` is missing."""

    kernel_release: str = ""
    btf: bool = False
    btf_path: str = ""
    tracefs: str = ""
    tracepoints: bool = False
    syscall_tracepoints: bool = False
    raw_tracepoints: bool = False
    kprobes: bool = False
    kretprobes: bool = False
    fentry: bool = False
    bpf_lsm: bool = False
    lsm_list: str = ""
    override_return: bool = False
    send_signal: bool = False
    ringbuf: bool = False
    uprobes: bool = False
    cgroup_sock_addr: bool = False
    cgroup_v2_root: str = ""
    task_iter: bool = False
    kernel_headers: str = ""
    probed: bool = False  # True: load-based results come from real loads, not from files
    mounted: list[str] = field(default_factory=list)  # filesystems detect() had to mount
    detect_seconds: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary_lines(self) -> list[str]:
        how = "probed by loading programs" if self.probed else "load-based results not probed"
        lines = [f"kernel {self.kernel_release} ({how}, {self.detect_seconds:.2f} s)"]
        for name in CAPABILITIES:
            value = getattr(self, name)
            if not value:
                detail = self.notes.get(name, "")
            elif name == "btf":
                detail = self.btf_path
            elif name == "bpf_lsm":
                detail = f"LSMs: {self.lsm_list}"
            elif isinstance(value, str):
                detail = value
            else:
                detail = ""
            lines.append(f"{name:<20} {'yes' if value else 'no':<4} {detail}".rstrip())
        lines.extend(f"mounted {m}" for m in self.mounted)
        return lines


def detect(btf_path: str = "/sys/kernel/btf/vmlinux", quick: bool = False) -> Features:
    """Detect what this kernel supports.  Never raises; negatives get a reason in notes."""
    start = time.monotonic()
    f = Features(kernel_release=os.uname().release)
    mounts = _read_mounts()
    _detect_btf(f, btf_path)
    _detect_tracefs(f, mounts)
    _detect_lsm_list(f, mounts)
    _detect_cgroup_v2(f, mounts)
    try:
        f.kernel_headers = kheaders.ensure()
    except kheaders.KernelHeadersError as e:
        f.notes["kernel_headers"] = str(e)
    blocked = _prerequisites(f)
    if quick:
        _decide_from_files(f, blocked)
    else:
        try:
            _probe_by_loading(f, blocked)
        except Exception as e:  # a bug or an odd environment must not stop the daemon
            _not_probed(f, blocked, f"probing failed ({type(e).__name__}: {e})")
    f.detect_seconds = round(time.monotonic() - start, 3)
    return f


# --- file-based facts ---------------------------------------------------------------------

def _read_mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) pairs from /proc/mounts, octal escapes decoded."""
    with open("/proc/mounts") as fh:
        fields = [line.split() for line in fh]
    return [(_unescape(p[1]), p[2]) for p in fields if len(p) >= 3]


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mount(fstype: str, target: str) -> str | None:
    """mount(2) a pseudo filesystem; None on success, else why it failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) == 0:
        return None
    err = ctypes.get_errno()
    return f"mount -t {fstype} {target} failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})"


def _detect_btf(f: Features, btf_path: str) -> None:
    if os.path.isfile(btf_path) and os.path.getsize(btf_path) > 0:
        f.btf, f.btf_path = True, btf_path
    else:
        f.notes["btf"] = f"no kernel BTF at {btf_path} (CONFIG_DEBUG_INFO_BTF off?)"


def _detect_tracefs(f: Features, mounts: list[tuple[str, str]]) -> None:
    points = [p for p, t in mounts if t == "tracefs"]
    preferred = [p for p in TRACEFS_MOUNTS if p in points]
    if preferred or points:
        f.tracefs = (preferred or points)[0]
    else:
        # BCC reads tracefs for tracepoint formats; mount it like systemd would.
        failure = _mount("tracefs", TRACEFS_MOUNTS[0])
        if failure:
            f.notes["tracefs"] = f"tracefs not mounted and {failure}"
        else:
            f.tracefs = TRACEFS_MOUNTS[0]
            f.mounted.append(f"tracefs at {f.tracefs}")

    if not f.tracefs:
        f.notes["tracepoints"] = f.notes["syscall_tracepoints"] = "no tracefs"
        return
    for name, event in (("tracepoints", "sched/sched_process_exec"),
                        ("syscall_tracepoints", "syscalls/sys_enter_openat")):
        path = f"{f.tracefs}/events/{event}/format"
        setattr(f, name, os.path.exists(path))
        if not getattr(f, name):
            f.notes[name] = f"{path} missing"


def _detect_lsm_list(f: Features, mounts: list[tuple[str, str]]) -> None:
    if (SECURITYFS, "securityfs") not in mounts and os.path.isdir(SECURITYFS):
        failure = _mount("securityfs", SECURITYFS)
        if failure:
            f.notes["lsm_list"] = failure
        else:
            f.mounted.append(f"securityfs at {SECURITYFS}")
    try:
        with open(f"{SECURITYFS}/lsm") as fh:
            f.lsm_list = fh.read().strip()
    except OSError as e:
        f.notes.setdefault("lsm_list", f"cannot read {SECURITYFS}/lsm: {e.strerror}")


def _detect_cgroup_v2(f: Features, mounts: list[tuple[str, str]]) -> None:
    points = [p for p, t in mounts if t == "cgroup2"]
    preferred = [p for p in CGROUP2_PREFERRED if p in points]
    if preferred or points:
        f.cgroup_v2_root = (preferred or points)[0]
    else:
        f.notes["cgroup_v2_root"] = "no cgroup2 mount in /proc/mounts"


def _pmu_or_events(f: Features, kind: str) -> bool:
    return (os.path.exists(f"{PMU_DIR}/{kind}/type")
            or bool(f.tracefs) and os.path.exists(f"{f.tracefs}/{kind}_events"))


def _prerequisites(f: Features) -> dict[str, str]:
    """Reasons, known from files alone, why a load-based capability cannot work."""
    blocked = {}
    if not _pmu_or_events(f, "kprobe"):
        blocked["kprobes"] = blocked["kretprobes"] = (
            f"no kprobe PMU ({PMU_DIR}/kprobe) and no kprobe_events in tracefs")
        blocked["override_return"] = "needs kprobes"
    if not _pmu_or_events(f, "uprobe"):
        blocked["uprobes"] = f"no uprobe PMU ({PMU_DIR}/uprobe) and no uprobe_events in tracefs"
    if not f.lsm_list:
        blocked["bpf_lsm"] = f"LSM list unknown ({f.notes.get('lsm_list', 'empty')})"
    elif "bpf" not in f.lsm_list.split(","):
        blocked["bpf_lsm"] = f"'bpf' not in the active LSM list ({f.lsm_list})"
    if not f.btf:
        for name in ("fentry", "bpf_lsm", "task_iter"):
            blocked.setdefault(name, "needs kernel BTF")
    return blocked


def _kernel_config() -> dict[str, str]:
    release = os.uname().release
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rt") as fh:
                return dict(line.strip().split("=", 1) for line in fh if line.startswith("CONFIG_"))
        except OSError:
            continue
    return {}


def _decide_from_files(f: Features, blocked: dict[str, str]) -> None:
    config = _kernel_config()
    try:
        with open("/proc/kallsyms") as fh:
            kallsyms = fh.read()
    except OSError:
        kallsyms = ""
    for name, (option, symbols) in QUICK_EVIDENCE.items():
        if name in blocked:
            f.notes[name] = blocked[name]
        elif option and config:
            if config.get(option) in ("y", "m"):
                setattr(f, name, True)
            else:
                f.notes[name] = f"{option} is not set"
        elif not symbols or any(f" {s}\n" in kallsyms for s in symbols):
            setattr(f, name, True)
        else:
            f.notes[name] = f"{' / '.join(symbols)} not in /proc/kallsyms"


# --- load-based probes --------------------------------------------------------------------

@contextlib.contextmanager
def _captured_stderr():
    """Collect what libbcc and the verifier print on fd 2, so it becomes a reason, not noise."""
    captured = {"text": ""}
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured["text"] = tmp.read().decode(errors="replace")


def _last_message(log: str) -> str:
    """The last line of a BCC/verifier log that explains something."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line and not re.match(r"(\d+:|processed |bpf: Failed to load program|\^|~)", line):
            return line
    return ""


def _explain(exc: Exception, log: str) -> str:
    text = str(exc)
    refused = re.findall(r"Failed to load program: (.+)", log)
    if refused or "Failed to load BPF program" in text or "Need super-user" in text:
        if refused:
            err = refused[-1].strip()
        elif "Need super-user" in text:  # BCC's wording for EPERM
            err = os.strerror(errno.EPERM)
        else:
            err = text.rsplit(": ", 1)[-1]
        reason = f"load refused: {_ERRNO_NAMES.get(err, '?')} ({err})"
        verdict = _last_message(log)
        return f"{reason}; verifier: {verdict}" if verdict else reason
    detail = _last_message(log)
    return f"{text} ({detail})" if detail and detail not in text else text


def _attempt(action) -> str | None:
    """Run one load/attach; None on success, else the reason it failed."""
    with _captured_stderr() as log:
        try:
            action()
            return None
        except Exception as e:  # BCC raises bare Exception for every failure
            error = e
    return _explain(error, log["text"])


def _not_probed(f: Features, blocked: dict[str, str], why: str) -> None:
    f.probed = False
    for name in LOAD_BASED:
        setattr(f, name, False)
        f.notes[name] = blocked.get(name, f"not probed: {why}")


def _probe_by_loading(f: Features, blocked: dict[str, str]) -> None:
    if not f.kernel_headers:
        _not_probed(f, blocked, "no kernel headers for BCC")
        return
    try:
        from bcc import BPF, BPFAttachType
    except ImportError as e:
        _not_probed(f, blocked, f"bcc not importable ({e})")
        return

    class ProbeBPF(BPF):
        # No auto-attach of kfunc__/lsm__ functions at construction: a program the kernel
        # refuses must fail alone, and stay reachable for cleanup() if only its attach fails.
        def _trace_autoload(self):
            pass

    # The ring buffer map is created with the object; if that fails, retry without it.
    b, failures = None, []
    for source in (PROBE_RINGBUF + PROBE_TEXT, PROBE_TEXT):
        with _captured_stderr() as log:
            try:
                b = ProbeBPF(text=source.encode())
            except Exception as e:
                failures.append(_explain(e, log["text"]))
        if b is not None:
            break
    if b is None:
        _not_probed(f, blocked, f"probe program failed: {failures[-1]}")
        return

    # BCC wants bytes (str works but warns).
    kprobe_target, lsm_hook = KPROBE_TARGET.encode(), LSM_HOOK.encode()
    probes = {
        "raw_tracepoints": lambda: b.attach_raw_tracepoint(
            tp=RAW_TP_TARGET.encode(), fn_name=b"tdp_raw_tp"),
        "kprobes": lambda: b.attach_kprobe(event=kprobe_target, fn_name=b"tdp_kprobe"),
        "kretprobes": lambda: b.attach_kretprobe(event=kprobe_target, fn_name=b"tdp_kprobe"),
        "override_return": lambda: b.load_func(b"tdp_override", BPF.KPROBE),
        "send_signal": lambda: b.load_func(b"tdp_signal", BPF.TRACEPOINT),
        "cgroup_sock_addr": lambda: b.load_func(
            b"tdp_sock_addr", BPF.CGROUP_SOCK_ADDR, attach_type=BPFAttachType.CGROUP_INET4_CONNECT),
        "fentry": lambda: b.attach_kfunc(kprobe_target),
        "bpf_lsm": lambda: b.attach_lsm(lsm_hook),
        "task_iter": lambda: b.load_func(b"bpf_iter__task", BPF.TRACING),
        "uprobes": lambda: b.attach_uprobe(
            name=UPROBE_TARGET[0].encode(), sym=UPROBE_TARGET[1].encode(), fn_name=b"tdp_kprobe"),
    }
    try:
        for name, action in probes.items():
            if name == "override_return" and not f.kprobes:
                failure = "needs kprobes"
            else:
                failure = blocked.get(name) or _attempt(action)
            setattr(f, name, failure is None)
            if failure:
                f.notes[name] = failure
    finally:
        with _captured_stderr():
            b.cleanup()
        atexit.unregister(b.cleanup)
    f.ringbuf = not failures
    if failures:
        f.notes["ringbuf"] = f"ring buffer map refused: {failures[0]}"
    f.probed = True
