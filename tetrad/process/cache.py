"""The process cache: every known process by exec_id, and the current one by
pid, bounded in size.

An entry is kept while the process runs and while any child that is still
kept references it as parent (its `refcnt`), so a parent stays resolvable
for as long as its children live.  Once nothing references an exited entry
it waits `grace_s` (late events may still name it) and is then collected.
When the cache is over `max_size`, the oldest collectable entries go first,
then the oldest entries of any kind; every such eviction is counted.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from .model import Process


class ProcessCache:
    def __init__(self, max_size: int = 65536, grace_s: float = 10.0, clock=time.monotonic):
        self.max_size = max_size
        self.grace_s = grace_s
        self.clock = clock
        self.by_exec_id: OrderedDict[str, Process] = OrderedDict()
        self.by_pid: dict[int, Process] = {}
        # the last exited process of each pid, until collected: events from
        # other ring buffers (tracing policies) may be handled after its exit
        self.exited_by_pid: dict[int, Process] = {}
        self._collectable: deque[tuple[float, str]] = deque()
        self.evictions = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.by_exec_id)

    def get(self, exec_id: str) -> Process | None:
        return self.by_exec_id.get(exec_id)

    def current(self, pid: int) -> Process | None:
        return self.by_pid.get(pid)

    def find(self, pid: int) -> Process | None:
        """The running process of `pid`, else the last one that exited."""
        return self.by_pid.get(pid) or self.exited_by_pid.get(pid)

    def parent_of(self, proc: Process) -> Process | None:
        if not proc.parent_exec_id:
            return None
        return self.by_exec_id.get(proc.parent_exec_id)

    def add(self, proc: Process) -> None:
        """Make `proc` the current process of its pid (after exec or clone)."""
        previous = self.by_pid.get(proc.pid)
        if previous is not None and previous is not proc:
            # exec replaced it, or its exit was never seen and the pid was reused
            self._release_self(previous)
        self.by_exec_id[proc.exec_id] = proc
        self.by_pid[proc.pid] = proc
        parent = self.parent_of(proc)
        if parent is not None:
            parent.refcnt += 1
        if len(self.by_exec_id) > self.max_size:
            self._shrink()

    def exited(self, pid: int) -> Process | None:
        """Mark the current process of `pid` exited; returns it (None if unknown)."""
        proc = self.by_pid.pop(pid, None)
        if proc is None:
            self.misses += 1
            return None
        proc.exited = True
        self.exited_by_pid[pid] = proc
        self._release_self(proc)
        return proc

    def _release_self(self, proc: Process) -> None:
        if self.by_pid.get(proc.pid) is proc:
            del self.by_pid[proc.pid]
        if not proc.exited:
            proc.exited = True
        self._decref(proc)

    def _decref(self, proc: Process) -> None:
        proc.refcnt -= 1
        if proc.refcnt <= 0:
            self._collectable.append((self.clock() + self.grace_s, proc.exec_id))

    def gc(self) -> int:
        """Collect entries whose grace period has passed; returns how many."""
        now = self.clock()
        removed = 0
        while self._collectable and self._collectable[0][0] <= now:
            _, eid = self._collectable.popleft()
            removed += self._remove(eid)
        return removed

    def _remove(self, exec_id: str) -> int:
        proc = self.by_exec_id.get(exec_id)
        if proc is None or proc.refcnt > 0:
            return 0   # already gone, or referenced again
        del self.by_exec_id[exec_id]
        if self.exited_by_pid.get(proc.pid) is proc:
            del self.exited_by_pid[proc.pid]
        parent = self.parent_of(proc)
        if parent is not None:
            self._decref(parent)
        return 1

    def _shrink(self) -> None:
        while len(self.by_exec_id) > self.max_size and self._collectable:
            _, eid = self._collectable.popleft()
            self.evictions += self._remove(eid)
        while len(self.by_exec_id) > self.max_size:
            eid, proc = self.by_exec_id.popitem(last=False)
            if self.by_pid.get(proc.pid) is proc:
                del self.by_pid[proc.pid]
            if self.exited_by_pid.get(proc.pid) is proc:
                del self.exited_by_pid[proc.pid]
            self.evictions += 1

    def stats(self) -> dict:
        return {"size": len(self.by_exec_id), "running": len(self.by_pid),
                "evictions": self.evictions, "misses": self.misses}
