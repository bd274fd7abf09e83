"""Function hooks and BPF LSM for real, through the backend tetrad/backends.py chooses.

bpf/hook_check.c observes this process getting a file descriptor through a kprobe, a
kretprobe, fentry and fexit, and denies one file to it from BPF LSM ``file_open``.  Each test
asks the backend rule what serves the hook on the running kernel, then:
* chosen: attaches exactly that, opens a file, and checks the event carries the fd;
* refused: checks that the kernel really refuses every mechanism the rule turned down.
On the development kernel (no kprobes, fentry and LSM refused) that proves the refusals; in
the kernel lane's guest (Debian 6.1, where scripts/kernel-lane/guest-run.sh sets
KERNEL_LANE_EXPECT_HOOKS) it proves genuine kprobes, kretprobes, fentry/fexit and an LSM deny,
and a refusal there fails the test.
"""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from tetrad import backends, bpf_loader, features, offsets
from tetrad.btf import Btf

HOOK_KPROBE, HOOK_KRETPROBE, HOOK_FENTRY, HOOK_FEXIT, HOOK_LSM_DENY = 1, 2, 3, 4, 5
ENTRY_FN, RETURN_FN = "fd_install", "get_unused_fd_flags"
MEMBERS = (offsets.Member("file", "f_inode"), offsets.Member("inode", "i_ino"))
EXPECTED = set(filter(None, os.environ.get("KERNEL_LANE_EXPECT_HOOKS", "").split(",")))


class HookEvent(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_uint32), ("tgid", ctypes.c_uint32), ("value", ctypes.c_uint64)]


@pytest.fixture(scope="module")
def feats():
    return features.detect()


@pytest.fixture(scope="module")
def btf():
    return Btf.load()


@pytest.fixture(scope="module")
def program(btf):
    """bpf/hook_check.c compiled once (a compile costs ~20 s in the guest), nothing attached."""
    b = bpf_loader.compile_program("hook_check.c", offsets.resolve(btf, MEMBERS, sizes=()),
                                   autoattach=False)
    received = []
    b[b"events"].open_ring_buffer(
        lambda ctx, data, size: received.append(ctypes.cast(data, ctypes.POINTER(HookEvent)).contents))
    b.received = received
    b[b"target"][ctypes.c_int(0)] = ctypes.c_uint64(os.getpid())
    yield b
    b.cleanup()


def events_of(program, backend: int, wait_s: float = 5.0) -> list[HookEvent]:
    deadline = time.monotonic() + wait_s
    while True:
        program.ring_buffer_poll(100)
        found = [e for e in program.received if e.backend == backend]
        if found or time.monotonic() > deadline:
            program.received.clear()
            return found


# backend -> (attach, detach, event type); fd_install at entry, get_unused_fd_flags at return
MECHANISMS = {
    "kprobe": (lambda b: b.attach_kprobe(event=ENTRY_FN.encode(), fn_name=b"on_fd_install"),
               lambda b: b.detach_kprobe(event=ENTRY_FN.encode()), HOOK_KPROBE),
    "kretprobe": (lambda b: b.attach_kretprobe(event=RETURN_FN.encode(), fn_name=b"on_get_unused_fd_return"),
                  lambda b: b.detach_kretprobe(event=RETURN_FN.encode()), HOOK_KRETPROBE),
    "fentry": (lambda b: b.attach_kfunc(ENTRY_FN.encode()),
               lambda b: b.detach_kfunc(ENTRY_FN.encode()), HOOK_FENTRY),
    "fexit": (lambda b: b.attach_kretfunc(RETURN_FN.encode()),
              lambda b: b.detach_kretfunc(RETURN_FN.encode()), HOOK_FEXIT),
}
# the mechanisms of one family, per hook kind
FAMILY = {("kprobe", "kprobe"): "kprobe", ("kretprobe", "kprobe"): "kretprobe",
          ("kprobe", "fentry"): "fentry", ("kretprobe", "fentry"): "fexit"}
CAPABILITY = {"kprobe": "kprobes", "kretprobe": "kretprobes", "fentry": "fentry", "fexit": "fentry"}


def attach_fails(program, mechanism: str) -> bool:
    attach, detach, _ = MECHANISMS[mechanism]
    try:
        attach(program)
    except Exception:
        return True
    detach(program)
    return False


def attach_fails_lsm(program) -> bool:
    try:
        program.attach_lsm(b"file_open")
    except Exception:
        return True
    program.detach_lsm(b"file_open")
    return False


@pytest.mark.parametrize("kind,function,force", [
    ("kprobe", ENTRY_FN, "auto"),
    ("kretprobe", RETURN_FN, "auto"),
    ("kprobe", ENTRY_FN, "fentry"),
    ("kretprobe", RETURN_FN, "fentry"),
])
def test_function_hook_fires_through_the_chosen_backend(program, feats, btf, tmp_path,
                                                        kind, function, force):
    # the function mechanisms alone: no tracepoint stands in for them here
    choice = backends.choose(feats, kind, function, force=force, in_btf=btf.has_func(function),
                             families=("kprobe", "fentry"))
    if choice.backend is None:
        turned_down = [FAMILY[(kind, "kprobe")], FAMILY[(kind, "fentry")]] if force == "auto" \
            else [FAMILY[(kind, force)]]
        for mechanism in turned_down:
            assert attach_fails(program, mechanism), \
                f"the rule refused {mechanism} ({choice.reason}) but it attaches"
        missing = EXPECTED & {CAPABILITY[m] for m in turned_down}
        assert not missing, f"this kernel must offer {missing}: {choice.reason}"
        return
    assert choice.backend in MECHANISMS, choice   # no tracepoint equivalent of these functions
    if force == "auto" and "kprobes" in EXPECTED:
        assert choice.backend in ("kprobe", "kretprobe"), "kprobes are preferred where they exist"
    attach, detach, event_type = MECHANISMS[choice.backend]
    attach(program)
    try:
        path = tmp_path / "observed"
        path.write_text("x")
        fd = os.open(path, os.O_RDONLY)
        os.close(fd)
        seen = events_of(program, event_type)
    finally:
        detach(program)
    assert seen, f"{choice.backend} on {function} attached but never fired"
    assert {e.tgid for e in seen} == {os.getpid()}
    assert fd in [e.value for e in seen], f"fd {fd} not among {[e.value for e in seen]}"


def test_lsm_file_open_denies_then_allows_after_detach(program, feats, tmp_path):
    choice = backends.choose(feats, "lsm", "file_open")
    secret, other = tmp_path / "secret", tmp_path / "other"
    secret.write_text("s")
    other.write_text("o")
    if choice.backend is None:
        assert attach_fails_lsm(program), f"the rule refused BPF LSM ({choice.reason}) but it attaches"
        assert "bpf_lsm" not in EXPECTED, f"this kernel must offer BPF LSM: {choice.reason}"
        return
    assert choice.backend == "bpf_lsm"
    program[b"target"][ctypes.c_int(1)] = ctypes.c_uint64(os.stat(secret).st_ino)
    program.attach_lsm(b"file_open")
    try:
        with pytest.raises(PermissionError):
            secret.read_text()
        assert other.read_text() == "o"        # only that inode is denied
        denied = events_of(program, HOOK_LSM_DENY)
    finally:
        program.detach_lsm(b"file_open")
    assert [e.value for e in denied] == [os.stat(secret).st_ino]
    assert secret.read_text() == "s"           # allowed again once detached
