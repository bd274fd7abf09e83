"""Which container and pod a process belongs to, for every event.

On the event path (`describe`), everything is a dictionary look-up: the
process's cgroup v2 id -> container id (from the cgroup path, see
cgroups.py), container id -> what containerd said about it.  containerd is
asked by two threads of this module, never by the event path:

- the watcher subscribes to containerd's events, so a new container is
  described as soon as it is created, before its first exec; it re-subscribes
  with backoff whenever containerd goes away;
- the worker describes containers (on the watcher's events, after each
  (re)connection for all containers, and on demand for a container seen
  before containerd mentioned it).

An exec in a container not described yet waits for the worker at most
`wait_s`, and only while containerd answers.  While containerd is down or
slow, events carry the `docker` field (known from the cgroup) but no `pod`;
one warning says so, the `containerd_errors` counter counts, and a message
says when it is back.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter

import grpc

from ..policy.scope import Workload
from .cgroups import (DEFAULT_CONTAINERD_NAMESPACES, CgroupPaths, container_from_path,
                      container_of_pid, parse_proc_cgroup, pod_cgroup_of)
from .containerd import LABEL_KIND, ContainerdClient, ContainerInfo, Describer
from .pb.containerd.events import container_pb2, task_pb2

log = logging.getLogger("tetrad.containers")

DOCKER_ID_LEN = 31         # Tetragon's `docker` field holds the id cut to this length
MAX_CGROUPS = 65536        # cgroup id -> container id entries kept
MISSING_TTL_S = 30.0       # a container containerd does not know is asked again after this
_SYNC = "sync"
_FETCH = "fetch"


class ContainerResolver:
    def __init__(self, procfs: str, cgroup_root: str, containerd_address: str,
                 wait_s: float = 0.1, timeout_s: float = 2.0,
                 backoff_s: tuple[float, float] = (0.5, 5.0), k8s=None):
        """`k8s`: a k8s.K8sWatcher in Kubernetes mode."""
        self.procfs = procfs
        self.k8s = k8s
        self.paths = CgroupPaths(cgroup_root) if cgroup_root else None
        self.address = containerd_address
        self.wait_s = wait_s
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.counters: Counter[str] = Counter()
        self.connected = False
        self._namespaces = set(DEFAULT_CONTAINERD_NAMESPACES)
        self._by_cgroup: dict[int, str] = {}        # "" = not in a container
        self._info: dict[str, ContainerInfo] = {}
        self._pods: dict[str, tuple] = {}           # container id -> (k8s generation, pod JSON without pid)
        self._pending: dict[str, threading.Event] = {}
        self._missing: dict[str, float] = {}
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._warned = False
        self._ever_connected = False
        self._stream = None
        self._threads: list[threading.Thread] = []
        self.client: ContainerdClient | None = None
        self._cgroup_of: dict[str, tuple[int, int]] = {}   # container id -> (its cgroup v2 id, its pod's)
        self._k8s_sought: set[str] = set()    # named by the API server, not found by the last walk
        self._k8s_walked_at = -1e9
        # called (from this module's threads) when containers come, go or change,
        # so that policies scoped to pods follow them (tetrad/policy/scope.py)
        self.on_change = None

    # -- life cycle -----------------------------------------------------------
    def start(self) -> None:
        if not self.address:
            log.info("containerd look-ups off (--containerd-address is empty): "
                     "events name containers but not pods")
            return
        self.client = ContainerdClient(self.address, self.timeout_s)
        self.describer = Describer(self.client, self.procfs)
        for target, name in ((self._watch, "containerd-events"), (self._work, "containerd-lookups")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def wait_synced(self, timeout_s: float) -> bool:
        """Wait (at start-up) until the containers that exist are described."""
        return self._synced.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 1)
        if self.client is not None:
            self.client.close()
        if self.paths is not None:
            self.paths.close()

    # -- the event path -------------------------------------------------------
    def describe(self, proc, wait: bool = True) -> None:
        """Fill `proc.docker` and `proc.pod` (when known) from its cgroup."""
        cid = self.container_id(proc.cgroup_id, proc.pid)
        if not cid:
            return
        proc.docker = cid[:DOCKER_ID_LEN]
        pod = self._pod_for(cid, wait)
        if pod is None:
            return
        self.counters["pods_found"] += 1
        out = dict(pod)
        container = dict(out["container"])
        if proc.nspid:
            container["pid"] = proc.nspid
        out["container"] = container
        proc.pod = out
        proc.invalidate()

    def _pod_for(self, cid: str, wait: bool) -> dict | None:
        """The pod object of a container (without the process's pid), from
        containerd and, in Kubernetes mode, the API server's view of the pod."""
        generation = self.k8s.generation if self.k8s is not None else 0
        cached = self._pods.get(cid)
        if cached is not None and cached[0] == generation:
            return cached[1]
        meta = self.k8s.pod_of_container(cid) if self.k8s is not None else None
        info = self._info_for(cid, wait and meta is None)
        if meta is None and info is not None and info.pod_uid and self.k8s is not None:
            meta = self.k8s.pod(info.pod_uid)
        if meta is None and (info is None or not info.pod_name):
            return None
        pod = pod_json(info, meta, cid)
        self._pods[cid] = (generation, pod)
        return pod

    def container_id(self, cgroup_id: int, pid: int) -> str:
        """The container id of a process ("" if none), cached per cgroup."""
        cid = self._by_cgroup.get(cgroup_id) if cgroup_id else None
        if cid is not None:
            return cid
        path = self.paths.path_of(cgroup_id) if self.paths is not None else None
        if path is not None and path != "/":
            found = container_from_path(path, self._namespaces)
            if len(self._by_cgroup) >= MAX_CGROUPS:
                self._by_cgroup.clear()
            cid = found.id if found else ""
            self._by_cgroup[cgroup_id] = cid
            return cid
        # A cgroup v2 path other than the root is taken as the truth (runc
        # places containers in the v2 hierarchy on hybrid hosts too).  At the
        # root, or without cgroup v2, only the v1 hierarchies can tell: ask
        # /proc while the process lives.
        found = container_of_pid(self.procfs, pid, self._namespaces)
        return found.id if found else ""

    def _info_for(self, cid: str, wait: bool) -> ContainerInfo | None:
        info = self._info.get(cid)
        if info is not None or self.client is None:
            return info
        if time.monotonic() < self._missing.get(cid, 0):
            return None
        with self._lock:
            event = self._pending.get(cid)
            if event is None:
                if not self.connected:
                    self.counters["lookups_while_down"] += 1
                    return None     # the resync after reconnecting will describe it
                event = self._pending[cid] = threading.Event()
                self._jobs.put((_FETCH, "", cid))
                self.counters["lookups_on_demand"] += 1   # not announced by containerd's events
        if wait and self.connected and not event.wait(self.wait_s):
            self.counters["lookups_late"] += 1
        return self._info.get(cid)

    # -- containerd's event stream ----------------------------------------------
    def _watch(self) -> None:
        backoff = self.backoff_s[0]
        while not self._stop.is_set():
            try:
                version = self.client.version()
                self._stream = self.client.subscribe()
                self._up(version)
                self._jobs.put((_SYNC, "", ""))   # after subscribing: no create is missed
                backoff = self.backoff_s[0]
                for envelope in self._stream:
                    self._on_event(envelope)
                if not self._stop.is_set():
                    raise ConnectionError("containerd closed the event stream")
            except grpc.RpcError as e:
                if self._stop.is_set():
                    break
                if e.code() != grpc.StatusCode.CANCELLED:   # cancelled by _down: reconnect
                    self._down(f"{e.code().name}: {e.details()}")
            except ConnectionError as e:
                self._down(str(e))
            self._stream = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_s[1])

    def _on_event(self, envelope) -> None:
        self.counters["containerd_events"] += 1
        ns = envelope.namespace
        self._namespaces.add(ns)
        topic = envelope.topic
        if topic == "/containers/delete":
            msg = container_pb2.ContainerDelete()
            msg.ParseFromString(envelope.event.value)
            self._forget(msg.id)
            return
        if topic in ("/containers/create", "/containers/update"):
            msg = (container_pb2.ContainerCreate() if topic.endswith("create")
                   else container_pb2.ContainerUpdate())
            msg.ParseFromString(envelope.event.value)
            cid = msg.id
        elif topic == "/tasks/create":
            msg = task_pb2.TaskCreate()
            msg.ParseFromString(envelope.event.value)
            cid = msg.container_id
            # its init process waits in the new cgroup until /tasks/start:
            # scoped policies can cover the container before its program runs
            if self._learn_cgroup(cid, msg.pid):
                self._changed()
        elif topic == "/tasks/start":
            msg = task_pb2.TaskStart()
            msg.ParseFromString(envelope.event.value)
            cid = msg.container_id
        else:
            return
        self._jobs.put((_FETCH, ns, cid))

    def _forget(self, cid: str) -> None:
        self._info.pop(cid, None)
        self._pods.pop(cid, None)
        self._cgroup_of.pop(cid, None)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _learn_cgroup(self, cid: str, pid: int) -> bool:
        """Note the cgroup v2 ids of a container and of its pod (kubelet's
        `.../pod<uid>/` or `...-pod<uid>.slice/`) from its init process; only a
        cgroup whose path names the container counts (never the root of a
        hybrid host's v2 tree, which would be every process)."""
        if not pid or self.paths is None:
            return False
        try:
            with open(f"{self.procfs}/{pid}/cgroup") as f:
                path = parse_proc_cgroup(f.read()).get("")
        except OSError:
            return False
        found = container_from_path(path or "/", self._namespaces)
        if found is None or found.id != cid:
            return False
        pod = pod_cgroup_of(path) if found.pod_uid else ""
        try:
            ids = (os.stat(self.paths.root + path).st_ino,
                   os.stat(self.paths.root + pod).st_ino if pod else 0)
        except OSError:
            return False
        known = self._cgroup_of.get(cid) == ids
        self._cgroup_of[cid] = ids
        self._by_cgroup[ids[0]] = cid
        return not known

    def k8s_changed(self) -> None:
        """The API server's pods changed (called from the K8sWatcher's thread):
        find the cgroups of containers it names that containerd did not (no
        containerd, or another runtime) by a walk of the cgroup tree: at once
        for a container not sought before, else at most every MISSING_TTL_S
        (a finished init container keeps its id but has no cgroup)."""
        named = set(self.k8s.container_ids())
        # snapshots: containerd's threads add entries meanwhile
        for cid in [c for c in list(self._cgroup_of) if c not in named and c not in self._info]:
            self._cgroup_of.pop(cid, None)     # gone from the API, never known to containerd
        missing = {cid for cid in named if cid not in self._cgroup_of}
        due = time.monotonic() - self._k8s_walked_at >= MISSING_TTL_S
        if self.paths is not None and (missing - self._k8s_sought or (missing and due)):
            self._k8s_walked_at = time.monotonic()
            root = self.paths.root
            for dirpath, _dirs, _files in os.walk(root):
                path = dirpath[len(root):]
                found = container_from_path(path, self._namespaces) if path else None
                if found is None or found.id not in missing:
                    continue
                pod = pod_cgroup_of(path) if found.pod_uid else ""
                try:
                    self._cgroup_of[found.id] = (os.stat(dirpath).st_ino,
                                                 os.stat(root + pod).st_ino if pod else 0)
                except OSError:
                    continue
        self._k8s_sought = {cid for cid in missing if cid not in self._cgroup_of}
        self._changed()

    def workloads(self) -> list[Workload]:
        """Every container of a pod (sandboxes included) whose cgroup is known,
        with what policy scopes select on (the API server's pod labels when known)."""
        out = []
        for cid, (cgid, pod_cgid) in list(self._cgroup_of.items()):
            info = self._info.get(cid)
            meta = None
            if self.k8s is not None:
                meta = self.k8s.pod_of_container(cid) or (
                    self.k8s.pod(info.pod_uid) if info is not None and info.pod_uid else None)
            if info is None:
                if meta is not None:   # known from the API server only
                    status = meta.containers.get(cid, {})
                    out.append(Workload(cgid, meta.namespace, dict(meta.labels), status.get("name", ""),
                                        status.get("image", {}).get("name", ""), pod_cgid))
                continue
            if meta is not None:
                out.append(Workload(cgid, meta.namespace, dict(meta.labels), info.name, info.image_name,
                                    pod_cgid, info.sandbox))
            elif info.pod_name:
                out.append(Workload(cgid, info.pod_namespace, dict(info.pod_labels), info.name,
                                    info.image_name, pod_cgid, info.sandbox))
        return out

    # -- describing containers (worker thread) ---------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                return
            kind, ns, cid = job
            try:
                if kind == _SYNC:
                    self._sync()
                else:
                    self._fetch(ns, cid)
                if not self.connected:
                    self._up("")
            except grpc.RpcError as e:
                self._down(f"{e.code().name}: {e.details()}")
            except Exception:   # a malformed record must not end the thread
                log.exception("describing container %s failed", cid or "(all)")
            finally:
                if cid:
                    with self._lock:
                        event = self._pending.pop(cid, None)
                    if event is not None:
                        event.set()

    def _sync(self) -> None:
        """Describe every container of every namespace."""
        count = 0
        for ns in self.client.namespaces():
            self._namespaces.add(ns)
            records = self.client.containers(ns)
            sandboxes = {r.id: r for r in records if r.labels.get(LABEL_KIND) == "sandbox"}
            for record in records:
                sandbox = sandboxes.get(self.describer.sandbox_id_of(record))
                self._store(self.describer.describe(ns, record, sandbox))
                count += 1
        self._synced.set()
        log.info("containerd at %s: %d containers described", self.address, count)

    def _fetch(self, ns: str, cid: str) -> None:
        for namespace in ([ns] if ns else sorted(self._namespaces, key=lambda n: n != "k8s.io")):
            record = self.client.container(namespace, cid)
            if record is not None:
                self._store(self.describer.describe(namespace, record))
                self._missing.pop(cid, None)
                return
        self._missing[cid] = time.monotonic() + MISSING_TTL_S

    def _store(self, info: ContainerInfo) -> None:
        self._info[info.id] = info
        self._pods.pop(info.id, None)
        self.counters["containers_described"] += 1
        self._learn_cgroup(info.id, info.pid)
        self._changed()

    # -- containerd up/down -------------------------------------------------------
    def _up(self, version: str) -> None:
        if self._warned:
            log.info("containerd at %s is %s; pods are named again", self.address,
                     "back" if self._ever_connected else "there now")
            self._warned = False
        elif version:
            log.info("containerd at %s: version %s", self.address, version)
        self.connected = self._ever_connected = True

    def _down(self, why: str) -> None:
        self.counters["containerd_errors"] += 1
        self.connected = False
        self._synced.set()     # start-up must not wait for a containerd that is not there
        stream = self._stream
        if stream is not None:
            # a hung containerd may keep the stream open: reconnect to learn when it is back
            stream.cancel()
        if not self._warned:
            if self._ever_connected or os.path.exists(self.address.removeprefix("unix://")):
                log.warning("containerd at %s unavailable (%s); events carry no pod information "
                            "until it answers again", self.address, why)
            else:   # a host without containerd: nothing is wrong
                log.info("no containerd at %s: events name containers from their cgroups, "
                         "pods only once containerd is there", self.address)
            self._warned = True

    def stats(self) -> dict:
        out = {"containerd_address": self.address, "containerd_connected": self.connected,
               "containers_known": len(self._info), "cgroups_known": len(self._by_cgroup),
               **self.counters}
        if self.k8s is not None:
            out["k8s"] = self.k8s.stats()
        return out


def pod_json(info: ContainerInfo | None, meta=None, cid: str = "") -> dict:
    """Tetragon's `pod` object (protobuf JSON: empty fields left out) from
    containerd's `info` and/or the API server's `meta` (a k8s.PodMeta, whose
    labels, owner and container status win); the container's pid is added
    per process."""
    if info is None:
        info = ContainerInfo(id=cid, namespace="")
    runtime_id = f"containerd://{info.id}"
    if meta is not None:
        runtime_id = meta.containers.get(info.id, {}).get("id", runtime_id)
        info = _with_api_view(info, meta)
    image = {}
    if info.image_id:
        image["id"] = info.image_id
    if info.image_name:
        image["name"] = info.image_name
    container: dict = {"id": runtime_id}
    if info.name:
        container["name"] = info.name
    if image:
        container["image"] = image
    if info.start_time:
        container["start_time"] = info.start_time
    pod: dict = {"namespace": info.pod_namespace, "name": info.pod_name}
    if info.pod_uid:
        pod["uid"] = info.pod_uid
    pod["container"] = container
    if info.pod_labels:
        pod["pod_labels"] = dict(info.pod_labels)
    if info.workload:
        pod["workload"] = info.workload
    if info.workload_kind:
        pod["workload_kind"] = info.workload_kind
    return pod


def _with_api_view(info: ContainerInfo, meta) -> ContainerInfo:
    status = meta.containers.get(info.id, {})
    image = status.get("image", {})
    return ContainerInfo(
        id=info.id, namespace=info.namespace, name=status.get("name") or info.name,
        image_name=image.get("name") or info.image_name, image_id=image.get("id") or info.image_id,
        start_time=status.get("start_time") or info.start_time, labels=info.labels,
        pod_name=meta.name, pod_namespace=meta.namespace, pod_uid=meta.uid,
        pod_labels=meta.labels, workload=meta.workload, workload_kind=meta.workload_kind,
        sandbox=info.sandbox)
