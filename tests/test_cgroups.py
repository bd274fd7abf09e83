"""Container ids from cgroup paths, on /proc/<pid>/cgroup texts as real hosts
write them, and cgroup v2 ids turned back into paths on this machine."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tetrad.containers.cgroups import (CgroupPaths, container_from_path,
                                       container_from_proc_cgroup, container_of_pid, pod_cgroup_of)
from tetrad.features import detect

ID = "3f3d5e0a9c2b7e4d1a6f8c0b2d4e6f8a1c3e5a7b9d0f2e4c6a8b0d2f4e6a8c0b"
ID2 = "9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
UID = "0f1d2c3b-4a59-6877-8695-a4b3c2d1e0f9"
UID_ = UID.replace("-", "_")

CASES = [
    # containerd driven directly (ctr, nerdctl): /<namespace>/<id>
    ("containerd k8s.io v2", f"0::/k8s.io/{ID}\n", ID, "containerd", ""),
    ("containerd default v2", f"0::/default/{ID}\n", ID, "containerd", ""),
    ("containerd named container", "0::/default/my-app\n", "my-app", "containerd", ""),
    # kubelet with the cgroupfs driver, cgroup v1 (one line per hierarchy)
    ("kubelet cgroupfs v1 burstable",
     f"12:pids:/kubepods/burstable/pod{UID}/{ID}\n"
     f"11:memory:/kubepods/burstable/pod{UID}/{ID}\n"
     f"4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n"
     f"1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n", ID, "", UID),
    ("kubelet cgroupfs v1 guaranteed (no qos level)",
     f"5:memory:/kubepods/pod{UID}/{ID}\n0::/\n", ID, "", UID),
    ("kubelet cgroupfs v2 besteffort", f"0::/kubepods/besteffort/pod{UID}/{ID}\n", ID, "", UID),
    ("kubelet cgroupfs cri-o", f"0::/kubepods/besteffort/pod{UID}/crio-{ID}\n", ID, "cri-o", UID),
    # kubelet with the systemd driver
    ("kubelet systemd v2 containerd",
     f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope\n", ID, "containerd", UID),
    ("kubelet systemd v1 containerd",
     f"10:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope\n"
     f"1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope\n0::/\n", ID, "containerd", UID),
    ("kubelet systemd cri-o",
     f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{ID}.scope\n", ID, "cri-o", UID),
    ("kubelet systemd guaranteed",
     f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n", ID, "containerd", UID),
    ("kind node (kubelet.slice inside the node container)",
     f"0::/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/"
     f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope\n", ID, "containerd", UID),
    # Docker
    ("docker cgroupfs v1", f"4:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n", ID, "docker", ""),
    ("docker cgroupfs v2", f"0::/docker/{ID}\n", ID, "docker", ""),
    ("docker systemd v2", f"0::/system.slice/docker-{ID}.scope\n", ID, "docker", ""),
    ("docker in docker", f"0::/docker/{ID2}/docker/{ID}\n", ID, "docker", ""),
    # Podman, rootful (with its nested `container` cgroup) and rootless
    ("podman rootful", f"0::/machine.slice/libpod-{ID}.scope/container\n", ID, "podman", ""),
    ("podman rootless",
     f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n",
     ID, "podman", ""),
    # seen from inside a cgroup namespace (e.g. tetrad in a pod with a private
    # cgroupns reading the host's /proc): the path climbs out with /..
    ("cgroup namespace, outside view",
     f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n",
     ID, "containerd", UID),
]

NOT_CONTAINERS = [
    ("host process v2", "0::/user.slice/user-0.slice/session-3.scope\n"),
    ("host process hybrid", "9:name=systemd:/\n4:memory:/system.slice/ssh.service\n0::/\n"),
    ("systemd service", "0::/system.slice/containerd.service\n"),
    ("pod slice itself", f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice\n"),
    ("cri-o conmon", f"0::/kubepods.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope\n"),
    ("podman conmon", f"0::/machine.slice/libpod-conmon-{ID}.scope\n"),
    ("inside the container's own cgroup namespace", "0::/\n"),
    ("empty", ""),
]


@pytest.mark.parametrize("name,text,cid,runtime,pod_uid", CASES, ids=[c[0] for c in CASES])
def test_container_found(name, text, cid, runtime, pod_uid):
    found = container_from_proc_cgroup(text)
    assert found is not None, name
    assert (found.id, found.runtime, found.pod_uid) == (cid, runtime, pod_uid)


@pytest.mark.parametrize("name,text", NOT_CONTAINERS, ids=[c[0] for c in NOT_CONTAINERS])
def test_not_a_container(name, text):
    assert container_from_proc_cgroup(text) is None


def test_v2_path_wins_over_v1_but_v1_is_used_when_v2_is_the_root():
    text = f"4:memory:/docker/{ID2}\n0::/k8s.io/{ID}\n"
    assert container_from_proc_cgroup(text).id == ID
    assert container_from_proc_cgroup(f"4:memory:/docker/{ID2}\n0::/\n").id == ID2


def test_free_form_ids_only_in_known_containerd_namespaces():
    assert container_from_path("/system.slice/cron.service") is None
    assert container_from_path("/tenant-a/web") is None
    assert container_from_path("/tenant-a/web", frozenset({"tenant-a"})).id == "web"


def test_host_process_here_has_no_container():
    assert container_of_pid("/proc", os.getpid()) is None
    assert container_of_pid("/proc", 0x7FFFFFFF) is None   # no such process


@pytest.fixture
def v2_cgroup():
    """A real cgroup directory under this machine's cgroup v2 root."""
    root = detect("/sys/kernel/btf/vmlinux", quick=True).cgroup_v2_root
    assert root, "cgroup v2 is not mounted"
    rel = f"/tetrad-test-{uuid.uuid4().hex[:8]}/k8s.io/{ID}"
    os.makedirs(root + rel)
    yield root, rel
    os.rmdir(root + rel)
    os.rmdir(os.path.dirname(root + rel))
    os.rmdir(os.path.dirname(os.path.dirname(root + rel)))


def test_cgroup_id_to_path_by_file_handle(v2_cgroup):
    root, rel = v2_cgroup
    paths = CgroupPaths(root)
    assert paths.path_of(os.stat(root + rel).st_ino) == rel
    assert paths._handles_work   # as root, the kernel resolves the id itself
    assert paths.path_of(os.stat(root).st_ino) == "/"
    assert container_from_path(rel).id == ID
    paths.close()


def test_cgroup_id_to_path_by_walking(v2_cgroup):
    root, rel = v2_cgroup
    now = [0.0]
    paths = CgroupPaths(root, rewalk_s=5.0, clock=lambda: now[0])
    paths._handles_work = False    # as where file handles are refused
    assert paths.path_of(os.stat(root + rel).st_ino) == rel
    newer = root + rel + "/child"
    os.mkdir(newer)
    try:
        ino = os.stat(newer).st_ino
        assert paths.path_of(ino) is None       # not walked again so soon
        now[0] += 5.0
        assert paths.path_of(ino) == rel + "/child"
    finally:
        os.rmdir(newer)


def test_cgroup_of_a_real_process_in_a_container_cgroup(v2_cgroup):
    root, rel = v2_cgroup
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(root + rel + "/cgroup.procs", "w") as f:
            f.write(str(child.pid))
        found = container_of_pid("/proc", child.pid)
        assert found is not None and found.id == ID and found.runtime == "containerd"
    finally:
        child.kill()
        child.wait()


def test_docker_field_without_containerd_from_a_real_process(v2_cgroup):
    from tetrad.containers.resolver import ContainerResolver
    from tetrad.process.model import Process
    root, rel = v2_cgroup
    resolver = ContainerResolver("/proc", root, containerd_address="")   # look-ups off
    resolver.start()
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(root + rel + "/cgroup.procs", "w") as f:
            f.write(str(child.pid))
        proc = Process(exec_id="e", pid=child.pid, tid=child.pid, ktime=0, start_time="", uid=0,
                       auid=0, cwd="/", binary="/bin/sleep", arguments="30", flags=0,
                       cgroup_id=os.stat(root + rel).st_ino)
        resolver.describe(proc)
        assert proc.docker == ID[:31] and proc.pod is None
        host = Process(exec_id="h", pid=os.getpid(), tid=os.getpid(), ktime=0, start_time="",
                       uid=0, auid=0, cwd="/", binary="", arguments="", flags=0,
                       cgroup_id=os.stat(root).st_ino)
        resolver.describe(host)
        assert host.docker == "" and host.pod is None
    finally:
        child.kill()
        child.wait()
        resolver.close()


@pytest.mark.parametrize("path, pod", [
    ("/kubepods/besteffort/pod0f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b/" + "a" * 64,
     "/kubepods/besteffort/pod0f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"),
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1d2c3b_4a59_4e6f_8a7b_9c0d1e2f3a4b.slice/"
     "cri-containerd-" + "b" * 64 + ".scope",
     "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1d2c3b_4a59_4e6f_8a7b_9c0d1e2f3a4b.slice"),
    ("/k8s.io/" + "c" * 64, ""),
    ("/docker/" + "d" * 64, ""),
])
def test_pod_cgroup_of_a_container_path(path, pod):
    assert pod_cgroup_of(path) == pod
