"""The observer: turns sensor records into process-cache updates and events,
and hands each event to the exporters.  This is the per-event hot path."""

from __future__ import annotations

import logging
import os

from .events import EventBuilder
from .process import flags as pflags
from .process.cache import ProcessCache
from .process.model import Process, exec_id, format_arguments
from .process.procfs import ProcInfo
from .sensors.records import RECORD_CLONE, RECORD_EXEC, RECORD_EXIT, TaskRecord
from .timefmt import rfc3339

log = logging.getLogger("tetrad.observer")

def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class Observer:
    def __init__(self, builder: EventBuilder, cache: ProcessCache, sink, containers=None):
        """`sink(event_type, event_dict, line)` receives every event;
        `containers` (a ContainerResolver) names each process's container and pod."""
        self.builder = builder
        self.cache = cache
        self.sink = sink
        self.containers = containers
        self.node = builder.node_name

    # -- records from the kernel -------------------------------------------
    def handle(self, rec: TaskRecord) -> None:
        if rec.type == RECORD_EXEC:
            self._exec(rec)
        elif rec.type == RECORD_EXIT:
            self._exit(rec)
        elif rec.type == RECORD_CLONE:
            self._clone(rec)

    def _exec(self, rec: TaskRecord) -> None:
        argv = rec.args.rstrip(b"\0").split(b"\0") if rec.args else []
        cwd = rec.cwd if not rec.flags & pflags.ERROR_CWD else ""
        binary = _text(rec.filename)
        if binary and not binary.startswith("/") and cwd:
            binary = os.path.normpath(os.path.join(cwd, binary))
        parent = self.cache.current(rec.ppid)
        proc = Process(
            exec_id=exec_id(self.node, rec.ktime, rec.pid), pid=rec.pid, tid=rec.pid,
            ktime=rec.ktime, start_time=rfc3339(self.builder.clock.to_wall_ns(rec.ktime)),
            uid=rec.creds[0], auid=rec.auid, cwd=cwd, binary=binary,
            arguments=format_arguments([_text(a) for a in argv[1:]]), flags=rec.flags,
            parent_exec_id=parent.exec_id if parent else "", nspid=rec.nspid,
            cgroup_id=rec.cgroup_id, creds=rec.creds, caps=rec.caps, ns=rec.ns)
        if self.containers is not None:
            self.containers.describe(proc)
        self.cache.add(proc)
        self.emit("process_exec", self.builder.process_exec(proc, parent))

    def _clone(self, rec: TaskRecord) -> None:
        parent = self.cache.current(rec.ppid)
        if parent is None:
            return   # its exit will be reported with the `miss` flag
        keep = parent.flags & (pflags.TRUNC_ARGS | pflags.TRUNC_FILENAME | pflags.ROOT_CWD)
        child = Process(
            exec_id=exec_id(self.node, rec.ktime, rec.pid), pid=rec.pid, tid=rec.pid,
            ktime=rec.ktime, start_time=rfc3339(self.builder.clock.to_wall_ns(rec.ktime)),
            uid=parent.uid, auid=parent.auid, cwd=parent.cwd, binary=parent.binary,
            arguments=parent.arguments, flags=pflags.CLONE | keep,
            parent_exec_id=parent.exec_id, nspid=rec.nspid, cgroup_id=rec.cgroup_id,
            creds=parent.creds, caps=parent.caps, ns=parent.ns, pod=parent.pod,
            docker=parent.docker)
        self.cache.add(child)

    def _exit(self, rec: TaskRecord) -> None:
        proc = self.cache.exited(rec.pid)
        if proc is None:
            proc = Process(exec_id=exec_id(self.node, 0, rec.pid), pid=rec.pid, tid=rec.tid,
                           ktime=0, start_time=rfc3339(0), uid=0, auid=0xFFFFFFFF, cwd="",
                           binary="", arguments="", flags=pflags.MISS, refcnt=0)
        elif proc.docker and proc.pod is None and self.containers is not None:
            self.containers.describe(proc, wait=False)   # its pod may be known by now
        self.emit("process_exit", self.builder.process_exit(
            proc, self.cache.parent_of(proc), rec.exit_code, rec.ktime))
        if proc.refcnt <= 0:
            proc.invalidate()   # kept a while for late events only: drop its cached JSON

    # -- processes found in /proc at start ----------------------------------
    def add_procfs(self, info: ProcInfo) -> Process:
        parent = self.cache.current(info.ppid)
        proc = Process(
            exec_id=exec_id(self.node, info.ktime, info.pid), pid=info.pid, tid=info.pid,
            ktime=info.ktime, start_time=rfc3339(self.builder.clock.to_wall_ns(info.ktime)),
            uid=info.uid, auid=info.auid, cwd=info.cwd, binary=info.binary,
            arguments=format_arguments(info.argv), flags=info.flags,
            parent_exec_id=parent.exec_id if parent else "", nspid=info.nspid,
            cgroup_id=info.cgroup_id, creds=info.creds, caps=info.caps, ns=info.ns)
        if self.containers is not None:
            self.containers.describe(proc, wait=False)
        self.cache.add(proc)
        return proc

    def emit(self, kind: str, built: tuple[dict, str]) -> None:
        """`built` is (event dict, its JSON line) from the EventBuilder;
        the daemon's sink counts, filters and exports it."""
        self.sink(kind, *built)
