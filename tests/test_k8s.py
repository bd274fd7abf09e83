"""Kubernetes mode against a Kubernetes API *emulator* (kmock, see
k8s_emulator.py), driven by the official `kubernetes` client: the pods of
this node and TracingPolicy custom resources."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse

import pytest

from k8s_emulator import KubeEmulator, pod
from tetrad.containers.k8s import K8sWatcher

CID = "a" * 64
OTHER = "b" * 64


@pytest.fixture
def emulator():
    e = KubeEmulator()
    yield e
    e.close()


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Policies:
    def __init__(self):
        self.seen: list[tuple[str, str, str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, action: str, doc: dict) -> None:
        with self.lock:
            meta = doc["metadata"]
            self.seen.append((action, doc["kind"], meta.get("namespace", ""), meta["name"]))


def test_pods_of_this_node_and_tracing_policies(emulator, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tetrad.k8s")
    xwing = pod("xwing-5f7c9d8b4-x2x7q", "default", "node-1", "uid-1",
                labels={"app": "xwing", "pod-template-hash": "5f7c9d8b4"},
                owner=("ReplicaSet", "xwing-5f7c9d8b4"),
                containers={"spaceship": (CID, "docker.io/tgraf/netperf:latest",
                                          "docker.io/tgraf/netperf@sha256:8e86")})
    elsewhere = pod("tie", "empire", "node-2", "uid-2",
                    containers={"tie": (OTHER, "busybox", "busybox@sha256:11")})
    emulator.create(xwing)
    emulator.create(elsewhere)
    cluster_policy = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy",
                      "metadata": {"name": "fd-install"}, "spec": {"kprobes": [{"call": "fd_install"}]}}
    emulator.create(cluster_policy)
    policies = Policies()
    watcher = K8sWatcher("node-1", str(emulator.kubeconfig(tmp_path / "kubeconfig")),
                         on_policy=policies, backoff_s=(0.2, 0.5))
    watcher.start()
    try:
        assert watcher.synced.wait(30)
        meta = watcher.pod_of_container(CID)
        assert (meta.namespace, meta.name, meta.uid) == ("default", "xwing-5f7c9d8b4-x2x7q", "uid-1")
        assert (meta.workload, meta.workload_kind) == ("xwing", "Deployment")
        assert meta.labels == {"app": "xwing", "pod-template-hash": "5f7c9d8b4"}
        assert meta.containers[CID] == {
            "id": f"containerd://{CID}", "name": "spaceship",
            "image": {"id": "docker.io/tgraf/netperf@sha256:8e86",
                      "name": "docker.io/tgraf/netperf:latest"},
            "start_time": "2026-01-02T03:04:05Z"}
        # only this node's pods: asked with a field selector, and checked again
        assert watcher.pod_of_container(OTHER) is None
        wait_until(lambda: any("fieldSelector=spec.nodeName=node-1" in u and "watch=true" in u
                               for u in map(urllib.parse.unquote, emulator.requests())),
                   what="a watch of this node's pods")

        # changes arrive through the watch
        emulator.patch(xwing, {"metadata": {"labels": {"app": "xwing", "tier": "fighter",
                                                       "pod-template-hash": "5f7c9d8b4"}}})
        wait_until(lambda: watcher.pod_of_container(CID).labels.get("tier") == "fighter",
                   what="the label change")
        late = pod("ywing", "rebels", "node-1", "uid-3",
                   containers={"gunner": ("c" * 64, "busybox", "busybox@sha256:22")})
        emulator.create(late)
        wait_until(lambda: watcher.pod_of_container("c" * 64), what="the new pod")
        assert watcher.pod_of_container("c" * 64).workload_kind == "Pod"
        emulator.delete(late)
        wait_until(lambda: watcher.pod_of_container("c" * 64) is None, what="the deleted pod")

        # tracing policies: cluster-wide at once; the namespaced kind once it exists
        wait_until(lambda: ("ADDED", "TracingPolicy", "", "fd-install") in policies.seen,
                   what="the cluster policy")
        namespaced = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicyNamespaced",
                      "metadata": {"name": "no-curl", "namespace": "rebels"},
                      "spec": {"podSelector": {"matchLabels": {"app": "ywing"}}}}
        emulator.create(namespaced)
        wait_until(lambda: ("ADDED", "TracingPolicyNamespaced", "rebels", "no-curl") in policies.seen,
                   what="the namespaced policy")
        # its CRD was missing at first: one warning, then one line when it is there (the
        # line may follow the first event: the watch's list is delivered before it is logged)
        def crd_lines():
            return [r.getMessage() for r in caplog.records if "tracingpoliciesnamespaced" in r.getMessage()]
        wait_until(lambda: len(crd_lines()) >= 2, what="the line saying the watch is back")
        assert crd_lines() == [
            "Kubernetes API: cannot watch tracingpoliciesnamespaced (its CustomResourceDefinition "
            "is not installed); retrying",
            "Kubernetes API: watching tracingpoliciesnamespaced again"]
        emulator.delete(cluster_policy)
        wait_until(lambda: ("DELETED", "TracingPolicy", "", "fd-install") in policies.seen,
                   what="the deleted policy")
        assert watcher.stats()["policies"] == 1
    finally:
        watcher.close()


def test_unreachable_api_server_is_retried_without_crashing(tmp_path):
    emulator = KubeEmulator()
    path = emulator.kubeconfig(tmp_path / "kubeconfig")
    emulator.close()          # nothing listens there any more
    watcher = K8sWatcher("node-1", str(path), backoff_s=(0.1, 0.2))
    watcher.start()
    try:
        assert watcher.synced.wait(30)          # start-up does not hang on it
        wait_until(lambda: watcher.errors >= 3, what="retries")
        assert watcher.pod_of_container(CID) is None
    finally:
        watcher.close()


def test_a_new_list_reports_policies_changed_or_gone_while_not_watching():
    policies = Policies()
    watcher = K8sWatcher("node-1", on_policy=policies)
    replace = watcher._policy_replacer("tracingpoliciesnamespaced")

    def policy(name, spec):   # as list items: without kind and apiVersion
        return {"metadata": {"name": name, "namespace": "rebels"}, "spec": spec}

    replace([policy("a", {"x": 1}), policy("b", {"x": 2})])
    replace([policy("a", {"x": 1}), policy("b", {"x": 3}), policy("c", {})])
    replace([policy("c", {})])
    kind = "TracingPolicyNamespaced"
    assert policies.seen == [
        ("ADDED", kind, "rebels", "a"), ("ADDED", kind, "rebels", "b"),
        ("MODIFIED", kind, "rebels", "b"), ("ADDED", kind, "rebels", "c"),
        ("DELETED", kind, "rebels", "a"), ("DELETED", kind, "rebels", "b")]
    assert [p["apiVersion"] for p in watcher.policies()] == ["cilium.io/v1alpha1"]
