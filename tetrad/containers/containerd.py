"""containerd's gRPC API: what a container is (labels, image, start time)
and which pod it belongs to.

Uses the stubs generated from containerd's own .proto files
(tetrad/containers/pb, scripts/gen-containerd-protos.sh).  Every call has a
deadline; callers run in tetrad's resolver threads, never on the event path.

Kubernetes containers are recognised by the labels kubelet gives them through
the CRI (io.kubernetes.pod.name, .namespace, .uid, io.kubernetes.container.name);
the pod's own labels sit on its sandbox container, found through the
io.kubernetes.cri.sandbox-id annotation of the container's OCI spec (or, when
absent, as the sandbox container with the same pod uid).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

import grpc

from ..timefmt import rfc3339
from .pb.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from .pb.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from .pb.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from .pb.containerd.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from .pb.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from .pb.containerd.services.version.v1 import version_pb2_grpc
from . import workload

log = logging.getLogger("tetrad.containerd")

LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
LABEL_KIND = "io.cri-containerd.kind"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"
# labels the CRI plugin and ctr add to a sandbox beside the pod's own labels
_NOT_POD_LABELS = (LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID, LABEL_CONTAINER_NAME)
_NOT_POD_LABEL_PREFIXES = ("io.cri-containerd.", "io.containerd.")

# the events that change what tetrad knows about a container
# (/tasks/create names the cgroup before the container's program starts)
EVENT_FILTERS = ('topic~="^/containers/"', 'topic=="/tasks/create"', 'topic=="/tasks/start"')

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class ContainerInfo:
    """One container as containerd describes it."""
    id: str
    namespace: str                      # the containerd namespace (k8s.io, default, ...)
    name: str = ""
    image_name: str = ""
    image_id: str = ""
    start_time: str = ""
    labels: dict = field(default_factory=dict)
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    pod_labels: dict = field(default_factory=dict)
    workload: str = ""
    workload_kind: str = ""
    sandbox: bool = False
    pid: int = 0                        # host pid of its init process (0: no task)


def socket_target(address: str) -> str:
    """gRPC target of a containerd address given as a path or unix:// URL."""
    return address if address.startswith("unix:") else "unix://" + address


def pod_labels_of(sandbox_labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sandbox_labels.items()
            if k not in _NOT_POD_LABELS and not k.startswith(_NOT_POD_LABEL_PREFIXES)}


def annotations_of(record) -> dict:
    """The annotations of a container's OCI spec (JSON in a protobuf Any)."""
    if not record.HasField("spec") or not record.spec.value:
        return {}
    try:
        spec = json.loads(record.spec.value)
    except ValueError:
        return {}
    return spec.get("annotations") or {} if isinstance(spec, dict) else {}


def start_time_of(procfs: str, pid: int) -> str:
    """Wall-clock start of a process, from /proc (empty if it is gone):
    the start of a container's init process is the container's start."""
    try:
        with open(f"{procfs}/{pid}/stat") as f:
            stat = f.read()
        with open(f"{procfs}/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError):
        return ""
    ticks = int(stat[stat.rindex(")") + 2:].split()[19])
    boot_ns = time.time_ns() - int(uptime * 1e9)
    started_s = (boot_ns + ticks * 1_000_000_000 // CLK_TCK) // 1_000_000_000
    return rfc3339(started_s * 1_000_000_000)   # whole seconds, as Kubernetes' startedAt


class ContainerdClient:
    """A connection to containerd; every call raises grpc.RpcError on failure."""

    def __init__(self, address: str, timeout_s: float = 2.0):
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(socket_target(address), options=[
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", 64 << 20)])
        self._containers = containers_pb2_grpc.ContainersStub(self.channel)
        self._tasks = tasks_pb2_grpc.TasksStub(self.channel)
        self._images = images_pb2_grpc.ImagesStub(self.channel)
        self._events = events_pb2_grpc.EventsStub(self.channel)
        self._namespaces = namespace_pb2_grpc.NamespacesStub(self.channel)
        self._version = version_pb2_grpc.VersionStub(self.channel)

    @staticmethod
    def _ns(namespace: str):
        return (("containerd-namespace", namespace),)

    def version(self) -> str:
        from google.protobuf import empty_pb2
        return self._version.Version(empty_pb2.Empty(), timeout=self.timeout_s).version

    def namespaces(self) -> list[str]:
        reply = self._namespaces.List(namespace_pb2.ListNamespacesRequest(), timeout=self.timeout_s)
        return [n.name for n in reply.namespaces]

    def container(self, namespace: str, cid: str):
        """The container record, or None if this namespace has no such container."""
        try:
            return self._containers.Get(containers_pb2.GetContainerRequest(id=cid),
                                        timeout=self.timeout_s, metadata=self._ns(namespace)).container
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def containers(self, namespace: str, filters: tuple[str, ...] = ()) -> list:
        reply = self._containers.List(containers_pb2.ListContainersRequest(filters=list(filters)),
                                      timeout=self.timeout_s, metadata=self._ns(namespace))
        return list(reply.containers)

    def task_pid(self, namespace: str, cid: str) -> int:
        """Host pid of the container's init process (0: no task)."""
        try:
            return self._tasks.Get(tasks_pb2.GetRequest(container_id=cid), timeout=self.timeout_s,
                                   metadata=self._ns(namespace)).process.pid
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise

    def image_digest(self, namespace: str, name: str) -> str:
        try:
            return self._images.Get(images_pb2.GetImageRequest(name=name), timeout=self.timeout_s,
                                    metadata=self._ns(namespace)).image.target.digest
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise

    def subscribe(self):
        """The stream of events of every namespace (cancel() it to stop)."""
        return self._events.Subscribe(events_pb2.SubscribeRequest(filters=list(EVENT_FILTERS)))

    def close(self) -> None:
        self.channel.close()


class Describer:
    """Builds ContainerInfo from containerd's records, caching what many
    containers share (sandboxes, image digests)."""

    def __init__(self, client: ContainerdClient, procfs: str = "/proc"):
        self.client = client
        self.procfs = procfs
        self._image_digests: dict[tuple[str, str], str] = {}

    def describe(self, namespace: str, record, sandbox_record=None) -> ContainerInfo:
        labels = dict(record.labels)
        annotations = annotations_of(record)
        # the CRI plugin may record the image by id; the annotation keeps its name
        image = annotations.get(ANNOTATION_IMAGE_NAME) or record.image
        info = ContainerInfo(id=record.id, namespace=namespace, labels=labels, image_name=image,
                             sandbox=labels.get(LABEL_KIND) == "sandbox")
        info.name = labels.get(LABEL_CONTAINER_NAME, "")
        info.image_id = self._image_id(namespace, image) or self._image_id(namespace, record.image)
        pid = info.pid = self.client.task_pid(namespace, record.id)
        info.start_time = start_time_of(self.procfs, pid) if pid else ""
        if not info.start_time and record.HasField("created_at"):
            info.start_time = rfc3339(record.created_at.seconds * 1_000_000_000 + record.created_at.nanos)
        info.pod_name = labels.get(LABEL_POD_NAME, "")
        info.pod_namespace = labels.get(LABEL_POD_NAMESPACE, "")
        info.pod_uid = labels.get(LABEL_POD_UID, "")
        if info.pod_name:
            if info.sandbox:
                sandbox_record = record
            elif sandbox_record is None:
                sandbox_record = self._sandbox_of(namespace, record, info.pod_uid)
            if sandbox_record is not None:
                info.pod_labels = pod_labels_of(dict(sandbox_record.labels))
            info.workload, info.workload_kind = workload.from_labels(info.pod_name, info.pod_labels)
        return info

    @staticmethod
    def sandbox_id_of(record) -> str:
        return annotations_of(record).get(ANNOTATION_SANDBOX_ID, "")

    def _sandbox_of(self, namespace: str, record, pod_uid: str):
        sandbox_id = self.sandbox_id_of(record)
        if sandbox_id and sandbox_id != record.id:
            found = self.client.container(namespace, sandbox_id)
            if found is not None:
                return found
        if pod_uid:
            for candidate in self.client.containers(namespace, (
                    f'labels."{LABEL_KIND}"==sandbox,labels."{LABEL_POD_UID}"=="{pod_uid}"',)):
                return candidate
        return None

    def _image_id(self, namespace: str, name: str) -> str:
        """Kubernetes' imageID spelling: <repository>@<digest>."""
        if not name:
            return ""
        key = (namespace, name)
        digest = self._image_digests.get(key)
        if digest is None:
            digest = self.client.image_digest(namespace, name)
            if digest:
                self._image_digests[key] = digest
        if not digest:
            return ""
        repo = name.split("@", 1)[0]
        if ":" in repo.rsplit("/", 1)[-1]:
            repo = repo[:repo.rindex(":")]
        return f"{repo}@{digest}"
