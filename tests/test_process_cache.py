"""The process cache: parents stay resolvable while children live, exited
entries are collected, and the size stays bounded on a host that forks forever."""

from __future__ import annotations

from tetrad.process.cache import ProcessCache
from tetrad.process.model import Process


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def proc(pid, ktime, parent=None):
    return Process(exec_id=f"id-{pid}-{ktime}", pid=pid, tid=pid, ktime=ktime, start_time="",
                   uid=0, auid=0, cwd="/", binary="/bin/x", arguments="", flags=0,
                   parent_exec_id=parent.exec_id if parent else "")


def test_parent_kept_while_child_lives():
    clock = Clock()
    cache = ProcessCache(max_size=100, grace_s=5, clock=clock)
    parent = proc(10, 1)
    cache.add(parent)
    child = proc(11, 2, parent)
    cache.add(child)
    assert parent.refcnt == 2
    cache.exited(10)
    clock.t = 100
    cache.gc()
    assert cache.parent_of(child) is parent        # child still alive: parent kept
    cache.exited(11)
    clock.t = 200
    cache.gc()                                      # child collected, releases parent
    clock.t = 300
    cache.gc()
    assert len(cache) == 0


def test_grace_period_before_collection():
    clock = Clock()
    cache = ProcessCache(max_size=100, grace_s=5, clock=clock)
    cache.add(proc(1, 1))
    cache.exited(1)
    clock.t = 4
    assert cache.gc() == 0 and len(cache) == 1
    clock.t = 6
    assert cache.gc() == 1 and len(cache) == 0


def test_exec_replaces_current_process_of_pid():
    cache = ProcessCache()
    shell = proc(5, 1)
    cache.add(shell)
    after_exec = proc(5, 2)
    cache.add(after_exec)
    assert cache.current(5) is after_exec
    assert shell.exited and shell.refcnt == 0


def test_bounded_under_fork_storm():
    clock = Clock()
    cache = ProcessCache(max_size=1000, grace_s=10, clock=clock)
    root = proc(1, 0)
    cache.add(root)
    for i in range(50_000):       # children that exit before the grace period ends
        c = proc(1000 + i, i + 1, root)
        cache.add(c)
        cache.exited(c.pid)
        clock.t += 0.0001
    assert len(cache) <= 1000
    assert cache.evictions > 0
    assert cache.current(1) is root               # the running parent survives


def test_unknown_exit_is_a_counted_miss():
    cache = ProcessCache()
    assert cache.exited(4242) is None
    assert cache.stats()["misses"] == 1


def test_serialized_process_matches_its_dict():
    import json
    p = Process(exec_id="e", pid=7, tid=7, ktime=1, start_time="2026-01-01T00:00:00Z", uid=1000,
                auid=1000, cwd="/tmp", binary="/bin/x y", arguments='a "b c"', flags=1 | 256,
                parent_exec_id="pe", creds=(1000,) * 8 + (1,), caps=(0, 1 << 21, 0),
                ns=(11, 12, 13, 14, 15, 16, 17, 18, 19, 20))
    p.refcnt = 3
    host = (11, 0, 13, 0, 0, 0, 0, 0, 0, 0)
    assert json.loads(p.to_text(host)) == p.to_json(host)
    assert p.to_json(host)["ns"]["uts"] == {"inum": 11, "is_host": True}
    assert p.to_json(host)["process_credentials"]["caps"] == {"effective": ["CAP_SYS_ADMIN"]}
    assert p.to_json(host)["process_credentials"]["securebits"] == ["SecBitNoRoot"]
    assert p.to_json(host)["flags"] == "execve rootcwd"
