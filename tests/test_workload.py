"""Workload and kind of a pod, from its labels alone and from its owner, and
the pod object's JSON shape."""

from __future__ import annotations

import pytest

from tetrad.containers import workload
from tetrad.containers.containerd import ContainerInfo, pod_labels_of
from tetrad.containers.resolver import pod_json

LABEL_CASES = [
    ("deployment", "xwing-5f7c9d8b4-x2x7q", {"app": "xwing", "pod-template-hash": "5f7c9d8b4"},
     ("xwing", "Deployment")),
    ("deployment with dashes", "death-star-api-6d4bd8b4c9-mq9zk",
     {"pod-template-hash": "6d4bd8b4c9"}, ("death-star-api", "Deployment")),
    ("statefulset", "db-2", {"controller-revision-hash": "db-7c9f4b7d8",
                             "statefulset.kubernetes.io/pod-name": "db-2"}, ("db", "StatefulSet")),
    ("daemonset", "tetrad-7xk2p", {"controller-revision-hash": "5d8f6c4b9",
                                   "pod-template-generation": "3"}, ("tetrad", "DaemonSet")),
    ("job", "backup-8rlwt", {"batch.kubernetes.io/job-name": "backup",
                             "job-name": "backup"}, ("backup", "Job")),
    ("cronjob's job", "report-28312345-k5d2r", {"job-name": "report-28312345"},
     ("report", "CronJob")),
    ("openshift deploymentconfig", "web-3-abcde", {"deploymentconfig": "web"},
     ("web", "DeploymentConfig")),
    ("bare pod", "xwing", {"app": "xwing"}, ("xwing", "Pod")),
    ("hash label that the name does not carry", "custom", {"pod-template-hash": "abc"},
     ("custom", "Pod")),
]


@pytest.mark.parametrize("name,pod,labels,expected", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_workload_from_labels(name, pod, labels, expected):
    assert workload.from_labels(pod, labels) == expected


def test_workload_from_owner_reference():
    labels = {"pod-template-hash": "5f7c9d8b4"}
    assert workload.from_owner("xwing-5f7c9d8b4-x2x7q", labels, "ReplicaSet",
                               "xwing-5f7c9d8b4") == ("xwing", "Deployment")
    assert workload.from_owner("rs-abcde", {}, "ReplicaSet", "rs") == ("rs", "ReplicaSet")
    assert workload.from_owner("db-0", {}, "StatefulSet", "db") == ("db", "StatefulSet")
    assert workload.from_owner("r-28312345-x", {}, "Job", "r-28312345") == ("r", "CronJob")
    assert workload.from_owner("solo", {}, "", "") == ("solo", "Pod")


def test_pod_labels_leave_out_what_the_runtime_adds():
    sandbox = {"app": "xwing", "io.kubernetes.pod.name": "xwing",
               "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": "u",
               "io.cri-containerd.kind": "sandbox",
               "io.containerd.image.config.stop-signal": "SIGTERM",
               "app.kubernetes.io/name": "xwing"}
    assert pod_labels_of(sandbox) == {"app": "xwing", "app.kubernetes.io/name": "xwing"}


def test_pod_json_is_tetragons_shape_with_empty_fields_left_out():
    info = ContainerInfo(id="a" * 64, namespace="k8s.io", name="spaceship",
                         image_name="docker.io/x/y:1", image_id="docker.io/x/y@sha256:00",
                         start_time="2026-01-02T03:04:05Z", pod_name="xwing",
                         pod_namespace="default", pod_uid="u-1", pod_labels={"app": "xwing"},
                         workload="xwing", workload_kind="Pod")
    assert pod_json(info) == {
        "namespace": "default", "name": "xwing", "uid": "u-1",
        "container": {"id": "containerd://" + "a" * 64, "name": "spaceship",
                      "image": {"id": "docker.io/x/y@sha256:00", "name": "docker.io/x/y:1"},
                      "start_time": "2026-01-02T03:04:05Z"},
        "pod_labels": {"app": "xwing"}, "workload": "xwing", "workload_kind": "Pod"}
    bare = ContainerInfo(id="b", namespace="k8s.io", pod_name="p", pod_namespace="ns")
    assert pod_json(bare) == {"namespace": "ns", "name": "p", "container": {"id": "containerd://b"}}
