"""Kubernetes mode (--enable-k8s-api): what only the API server knows.

Watches, with the official `kubernetes` client (in-cluster config, or the
--kubeconfig file):
- the pods of this node (field selector spec.nodeName=<node>): labels, the
  controller owner reference (so the exact workload and kind), and the
  container statuses that map container ids to pods, so pods are named even
  when containerd cannot be asked;
- TracingPolicy (cluster-wide) and TracingPolicyNamespaced custom resources,
  handed as parsed documents to `on_policy(action, document)` (action:
  "ADDED", "MODIFIED" or "DELETED"), where the policy loader takes them like
  policy files.

Each resource is listed, then watched from the list's resourceVersion, in a
thread of its own; on any failure it is listed again after a backoff.  The
watch requests are made by hand (`watch=true`, one JSON event per line) so
that raw dictionaries, not generated model objects, are kept.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable

from . import workload

log = logging.getLogger("tetrad.k8s")

POLICY_GROUP, POLICY_VERSION = "cilium.io", "v1alpha1"
POLICY_PLURALS = ("tracingpolicies", "tracingpoliciesnamespaced")
WATCH_TIMEOUT_S = 300


@dataclass(slots=True)
class PodMeta:
    namespace: str
    name: str
    uid: str
    labels: dict
    workload: str
    workload_kind: str
    containers: dict = field(default_factory=dict)   # container id -> Tetragon container JSON


def _container_id(status_id: str) -> str:
    """containerStatuses[].containerID is "<runtime>://<id>"."""
    return status_id.split("://", 1)[-1]


def pod_meta(pod: dict) -> PodMeta:
    meta = pod.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    name = meta.get("name", "")
    wl, kind = workload.from_owner(name, labels, owner.get("kind", ""), owner.get("name", ""))
    info = PodMeta(namespace=meta.get("namespace", ""), name=name, uid=meta.get("uid", ""),
                   labels=labels, workload=wl, workload_kind=kind)
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            if not cs.get("containerID"):
                continue
            container = {"id": cs["containerID"], "name": cs.get("name", "")}
            image = {k: v for k, v in (("id", cs.get("imageID")), ("name", cs.get("image"))) if v}
            if image:
                container["image"] = image
            started = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
            if started:
                container["start_time"] = started
            info.containers[_container_id(cs["containerID"])] = container
    return info


class K8sWatcher:
    def __init__(self, node_name: str, kubeconfig: str = "",
                 on_policy: Callable[[str, dict], None] | None = None,
                 backoff_s: tuple[float, float] = (1.0, 30.0)):
        self.node_name = node_name
        self.kubeconfig = kubeconfig
        self.on_policy = on_policy
        self.backoff_s = backoff_s
        self.generation = 0          # bumped on every change, so cached pod objects are rebuilt
        self.on_change = None        # called after pods change (scoped policies follow labels)
        self._pods: dict[str, PodMeta] = {}          # pod uid -> pod
        self._by_container: dict[str, PodMeta] = {}
        self._policies: dict[tuple, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._responses: set = set()
        self._threads: list[threading.Thread] = []
        self.errors = 0
        self.synced = threading.Event()

    # -- life cycle -----------------------------------------------------------
    def start(self) -> None:
        from kubernetes import client, config
        configuration = client.Configuration()
        if self.kubeconfig:
            config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        log.info("Kubernetes API at %s: watching the pods of node %s and tracing policies",
                 configuration.host, self.node_name)
        watches = [("pods", self._list_pods, self._on_pod, self._replace_pods)]
        for plural in POLICY_PLURALS:
            watches.append((plural, self._lister(plural), self._on_policy,
                            self._policy_replacer(plural)))
        for name, lister, handler, replace in watches:
            t = threading.Thread(target=self._run, args=(name, lister, handler, replace),
                                 name=f"k8s-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for resp in list(self._responses):
            # wake the thread blocked reading the watch: shut its socket down
            sock = getattr(getattr(resp, "_connection", None), "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                resp.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=2)

    # -- look-ups (event path: dictionary reads only) -------------------------
    def pod_of_container(self, cid: str) -> PodMeta | None:
        return self._by_container.get(cid)

    def pod(self, uid: str) -> PodMeta | None:
        return self._pods.get(uid)

    def container_ids(self) -> list[str]:
        """The containers of this node's pods, as their statuses name them."""
        return list(self._by_container)

    def policies(self) -> list[dict]:
        """The TracingPolicy/TracingPolicyNamespaced documents known now."""
        return list(self._policies.values())

    def stats(self) -> dict:
        return {"pods": len(self._pods), "policies": len(self._policies), "errors": self.errors}

    # -- list + watch ---------------------------------------------------------
    def _list_pods(self, **kw):
        return self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", **kw)

    def _lister(self, plural: str):
        def lister(**kw):
            return self.custom.list_cluster_custom_object(POLICY_GROUP, POLICY_VERSION, plural, **kw)
        return lister

    def _run(self, name: str, lister, handler, replace) -> None:
        """List (`replace` takes the full list), then watch (`handler` takes
        each change), again and again."""
        from kubernetes.client.exceptions import ApiException
        backoff = self.backoff_s[0]
        warned = False
        while not self._stop.is_set():
            try:
                resp = lister(_preload_content=False, _request_timeout=30)
                listing = json.loads(resp.data)
                replace(listing.get("items") or [])
                if name == "pods":
                    self.synced.set()
                if warned:
                    log.info("Kubernetes API: watching %s again", name)
                    warned = False
                backoff = self.backoff_s[0]
                version = (listing.get("metadata") or {}).get("resourceVersion", "")
                self._watch(lister, handler, version)
                continue      # the server ended the watch: list again
            except ApiException as e:
                why = f"HTTP {e.status} {e.reason}"
                if e.status == 404 and name != "pods":
                    why = "its CustomResourceDefinition is not installed"
            except Exception as e:   # connection refused, reset, bad JSON...
                why = f"{type(e).__name__}: {e}"
            if self._stop.is_set():
                return
            self.errors += 1
            if name == "pods":
                self.synced.set()
            if not warned:
                log.warning("Kubernetes API: cannot watch %s (%s); retrying", name, why)
                warned = True
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_s[1])

    def _watch(self, lister, handler, version: str) -> None:
        kw = {"watch": "true", "timeout_seconds": WATCH_TIMEOUT_S, "allow_watch_bookmarks": True}
        if version:
            kw["resource_version"] = version
        resp = lister(_preload_content=False, _request_timeout=(10, WATCH_TIMEOUT_S + 30), **kw)
        self._responses.add(resp)
        try:
            buf = b""
            for chunk in resp.stream(65536, decode_content=False):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._watch_event(json.loads(line), handler)
        finally:
            self._responses.discard(resp)
            resp.release_conn()

    def _watch_event(self, event: dict, handler) -> None:
        kind = event.get("type")
        if kind == "ERROR":
            status = event.get("object") or {}
            raise RuntimeError(f"watch error {status.get('code')}: {status.get('message')}")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            handler(kind, event.get("object") or {})

    # -- pods ---------------------------------------------------------------------
    def _replace_pods(self, items: list[dict]) -> None:
        """A fresh list: swapped in at once, so look-ups never see it half-built."""
        pods, by_container = {}, {}
        for obj in items:
            if (obj.get("spec") or {}).get("nodeName") not in (None, self.node_name):
                continue
            info = pod_meta(obj)
            pods[info.uid] = info
            for cid in info.containers:
                by_container[cid] = info
        with self._lock:
            self._pods, self._by_container = pods, by_container
            self.generation += 1
        if self.on_change is not None:
            self.on_change()

    def _on_pod(self, action: str, obj: dict) -> None:
        if (obj.get("spec") or {}).get("nodeName") not in (None, self.node_name):
            return     # the field selector already says so; kept for servers that ignore it
        info = pod_meta(obj)
        with self._lock:
            old = self._pods.pop(info.uid, None)
            by_container = dict(self._by_container)
            if old is not None:
                for cid in old.containers:
                    by_container.pop(cid, None)
            if action != "DELETED":
                self._pods[info.uid] = info
                for cid in info.containers:
                    by_container[cid] = info
            self._by_container = by_container
            self.generation += 1
        if self.on_change is not None:
            self.on_change()

    # -- tracing policies -------------------------------------------------------------
    def _policy_replacer(self, plural: str):
        kind = "TracingPolicy" if plural == "tracingpolicies" else "TracingPolicyNamespaced"

        def replace(items: list[dict]) -> None:
            """A fresh list: report what changed since the last one, and what
            disappeared while the watch was down."""
            listed = {}
            for obj in items:
                # list items may leave out what every item of the list shares
                obj = dict(obj, kind=obj.get("kind") or kind,
                           apiVersion=obj.get("apiVersion") or f"{POLICY_GROUP}/{POLICY_VERSION}")
                meta = obj.get("metadata") or {}
                listed[(kind, meta.get("namespace", ""), meta.get("name", ""))] = obj
            for key in [k for k in self._policies if k[0] == kind and k not in listed]:
                self._on_policy("DELETED", self._policies[key])
            for key, obj in listed.items():
                old = self._policies.get(key)
                if old is None:
                    self._on_policy("ADDED", obj)
                elif old != obj:
                    self._on_policy("MODIFIED", obj)
        return replace

    def _on_policy(self, action: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        key = (obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))
        if action == "DELETED":
            self._policies.pop(key, None)
        else:
            self._policies[key] = obj
        log.info("Kubernetes API: %s %s%s %s", obj.get("kind", "policy"),
                 f"{key[1]}/" if key[1] else "", key[2], action.lower())
        if self.on_policy is not None:
            try:
                self.on_policy(action, obj)
            except Exception:
                log.exception("loading %s %s failed", key[0], key[2])
