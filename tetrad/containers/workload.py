"""A pod's workload (the object that owns it) and its kind.

With the Kubernetes API, the pod's controller owner reference says it; a
Deployment is recognised behind its ReplicaSet by the `pod-template-hash`
label, as Tetragon does.  Without the API (containerd alone), only the
labels and the pod name tell, by the conventions of Kubernetes' own
controllers:

    pod-template-hash=H, name <w>-H-<x>           Deployment <w>
    deploymentconfig=<w>                          DeploymentConfig <w> (OpenShift)
    statefulset.kubernetes.io/pod-name, <w>-<n>   StatefulSet <w>
    controller-revision-hash + pod-template-generation, <w>-<x>   DaemonSet <w>
    batch.kubernetes.io/job-name or job-name=<j>  Job <j>, or CronJob <c> when <j> is <c>-<8-10 digits>
    anything else                                 Pod <pod name>
"""

from __future__ import annotations

import re

_CRONJOB_JOB = re.compile(r"(.+)-\d{8,10}$")


def _job(job_name: str) -> tuple[str, str]:
    m = _CRONJOB_JOB.fullmatch(job_name)
    return (m.group(1), "CronJob") if m else (job_name, "Job")


def from_owner(pod_name: str, labels: dict[str, str], owner_kind: str,
               owner_name: str) -> tuple[str, str]:
    """(workload, kind) from the pod's controller owner reference."""
    template_hash = labels.get("pod-template-hash", "")
    if owner_kind == "ReplicaSet" and template_hash and owner_name.endswith("-" + template_hash):
        return owner_name[:-len(template_hash) - 1], "Deployment"
    if owner_kind == "ReplicationController" and labels.get("deploymentconfig"):
        return labels["deploymentconfig"], "DeploymentConfig"
    if owner_kind == "Job":
        return _job(owner_name)
    if owner_kind and owner_name:
        return owner_name, owner_kind
    return pod_name, "Pod"


def from_labels(pod_name: str, labels: dict[str, str]) -> tuple[str, str]:
    """(workload, kind) guessed from labels and the pod's name alone."""
    template_hash = labels.get("pod-template-hash")
    if template_hash and f"-{template_hash}-" in pod_name:
        return pod_name[:pod_name.rindex(f"-{template_hash}-")], "Deployment"
    if labels.get("deploymentconfig"):
        return labels["deploymentconfig"], "DeploymentConfig"
    if "statefulset.kubernetes.io/pod-name" in labels:
        base, _, ordinal = pod_name.rpartition("-")
        if base and ordinal.isdigit():
            return base, "StatefulSet"
    if "controller-revision-hash" in labels and "pod-template-generation" in labels:
        base, _, suffix = pod_name.rpartition("-")
        if base and suffix:
            return base, "DaemonSet"
    job_name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    if job_name:
        return _job(job_name)
    return pod_name, "Pod"
