"""FollowFD, UnfollowFD and CopyFD against the real kernel, with the semantics
Tetragon had for them: FollowFD maps (process, fd) to the file's path, an
`fd` argument reports that path (and drops the event when the fd is not
followed), CopyFD copies the mapping of the fd at argFd to the fd number at
argName (dup2/dup3), UnfollowFD removes one mapping and is reported only when
there was one."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import exits_of
from policytools import WORKLOAD_PYTHON, kprobe_events, settle, start_with_policies

SUFFIX = ".tetrad-followed"

POLICY = f"""apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: followfd
spec:
  kprobes:
  - call: fd_install
    syscall: false
    args:
    - index: 0
      type: int
    - index: 1
      type: file
    selectors:
    - matchArgs:
      - index: 1
        operator: Postfix
        values: ["{SUFFIX}"]
      matchActions:
      - action: FollowFD
        argFd: 0
        argName: 1
  - call: sys_dup2
    syscall: true
    args:
    - index: 0
      type: fd
    - index: 1
      type: int
    selectors:
    - matchActions:
      - action: CopyFD
        argFd: 0
        argName: 1
  - call: sys_dup3
    syscall: true
    args:
    - index: 0
      type: fd
    - index: 1
      type: int
    - index: 2
      type: int
    selectors:
    - matchActions:
      - action: CopyFD
        argFd: 0
        argName: 1
  - call: sys_close
    syscall: true
    args:
    - index: 0
      type: int
    selectors:
    - matchActions:
      - action: UnfollowFD
        argFd: 0
        argName: 0
  - call: sys_read
    syscall: true
    args:
    - index: 0
      type: fd
    - index: 1
      type: char_buf
      returnCopy: true
    - index: 2
      type: size_t
"""

WORKLOAD = """
import ctypes, json, os, sys
followed, plain = sys.argv[1], sys.argv[2]
fd = os.open(followed, os.O_RDONLY)        # FollowFD
other = os.open(plain, os.O_RDONLY)        # not followed
os.dup2(fd, 40)                            # dup2: CopyFD fd -> 40
os.dup2(fd, 41, inheritable=False)         # dup3: CopyFD fd -> 41
os.dup2(other, 42)                         # CopyFD from an fd that is not followed: nothing
# dup(2) installs a new fd: FollowFD again (libc's dup: os.dup uses
# fcntl(F_DUPFD_CLOEXEC), which the tracepoint equivalent of fd_install misses)
copy = ctypes.CDLL(None, use_errno=True).dup(fd)
def read(f):
    os.lseek(f, 0, os.SEEK_SET)
    os.read(f, 64)
for f in (fd, 40, 41, 42, copy, other):
    read(f)
os.close(fd)                               # unfollows fd only
read(40)
for f in (40, 41, 42, copy, other):
    os.close(f)
try:
    os.close(4242)                         # not open, not followed: close-mixed's Post selector
except OSError:
    pass
print(json.dumps({"pid": os.getpid(), "fd": fd, "copy": copy, "other": other}))
"""


# A close hook whose selectors do not all start with UnfollowFD: the entry
# program must not skip the calls on fds that are not followed.
MIXED = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: close-mixed
spec:
  kprobes:
  - call: sys_close
    syscall: true
    args:
    - index: 0
      type: int
    selectors:
    - matchArgs:
      - index: 0
        operator: Equal
        values: ["4242"]
    - matchActions:
      - action: UnfollowFD
        argFd: 0
        argName: 0
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    daemon = start_with_policies(tmp_path_factory.mktemp("followfd"),
                                 {"followfd.yaml": POLICY, "mixed.yaml": MIXED})
    yield daemon
    daemon.stop()


def test_followfd_copyfd_unfollowfd(d, tmp_path):
    followed = tmp_path / ("data" + SUFFIX)
    followed.write_text("followed content\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("plain content\n")
    out = subprocess.run([WORKLOAD_PYTHON, "-c", WORKLOAD, str(followed), str(plain)],
                         capture_output=True, text=True, check=True, timeout=30)
    w = json.loads(out.stdout)
    d.wait_for(lambda ev: exits_of(ev, w["pid"]), what="the workload's exit")
    mine = kprobe_events(settle(d, 1.0), w["pid"])
    path = os.path.realpath(followed)

    def calls(fn):
        return [b for b in mine if b["function_name"] == fn]

    installs = [(b["args"][0]["int_arg"], b["args"][1]["file_arg"]["path"]) for b in calls("fd_install")]
    assert installs == [(w["fd"], path), (w["copy"], path)], "open and dup of the file were not both followed"

    # CopyFD runs on the dup2/dup3 of the followed fd; the dup2 of the other
    # fd is no event at all (its fd argument is not followed)
    copies = [(b["function_name"], b["args"][0]["file_arg"]["path"], b["args"][1]["int_arg"], b["action"])
              for b in calls("sys_dup2") + calls("sys_dup3")]
    assert sorted(copies) == [("sys_dup2", path, 40, "KPROBE_ACTION_COPYFD"),
                              ("sys_dup3", path, 41, "KPROBE_ACTION_COPYFD")]

    # reads on every copy are reported with the path; on 42 (a copy of an fd
    # that is not followed) and on the other file, none; after close(fd), 40
    # is still followed
    reads = [b["args"][0]["file_arg"]["path"] for b in calls("sys_read")]
    assert reads == [path] * 5
    assert all(b["args"][1]["bytes_arg"] for b in calls("sys_read"))

    # a close is reported for each followed fd, once, and for nothing else
    mine_closes = [b for b in calls("sys_close") if b["policy_name"] == "followfd"]
    assert sorted(b["args"][0]["int_arg"] for b in mine_closes) == sorted([w["fd"], 40, 41, w["copy"]])
    assert all(b["action"] == "KPROBE_ACTION_UNFOLLOWFD" for b in mine_closes)
    # a selector that does not unfollow still sees closes of fds that are not followed
    assert [b["args"][0]["int_arg"] for b in calls("sys_close") if b["policy_name"] == "close-mixed"] == [4242]
