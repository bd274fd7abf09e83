"""A real containerd (Debian's containerd + runc) for the tests: private
socket, root and state directories in a tmp dir, no CRI plugin, a small OCI
image made from busybox-static and imported with `ctr image import` (no
registry is reachable), and helpers that create Kubernetes-style pods the way
the CRI plugin lays them out: a sandbox container carrying the pod's labels,
application containers carrying kubelet's io.kubernetes.* labels and the
sandbox id annotation, in the k8s.io namespace, under a kubelet-style
(cgroupfs driver) cgroup path."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

BUSYBOX = "/bin/busybox"
IMAGE = "docker.io/tetrad-test/busybox:1.35"
APPLETS = ("sh", "sleep", "true", "cat", "echo", "ls", "id")


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


def build_busybox_oci(dest: Path, name: str = IMAGE) -> Path:
    """An OCI image archive: one layer holding busybox and its applet links."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    layer_bytes = layer.getvalue()
    work = dest.parent / "oci-layout"
    blobs = work / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer_digest, layer_size = _blob(blobs, layer_bytes)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    config_digest, config_size = _blob(blobs, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer_digest, "size": layer_size}]}
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest_size,
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}
    (work / "index.json").write_text(json.dumps(index))
    (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    with tarfile.open(dest, "w") as tar:
        for entry in sorted(work.iterdir()):
            tar.add(entry, arcname=entry.name)
    shutil.rmtree(work)
    return dest


class Containerd:
    """containerd serving on <dir>/containerd.sock."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "containerd.sock")
        self.config = self.dir / "config.toml"
        self.config.write_text(f"""version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
""")
        self.log_path = self.dir / "containerd.log"
        self.proc: subprocess.Popen | None = None
        self.image_digest = ""

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited:\n{self.log_path.read_text()[-3000:]}")
            if os.path.exists(self.socket) and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"containerd not serving after {timeout}s")

    def stop(self) -> None:
        """Stop containerd itself; shims, and so containers, keep running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ctr(self, *args, namespace: str = "k8s.io", check: bool = True, timeout: float = 60):
        out = subprocess.run(["ctr", "--address", self.socket, "--namespace", namespace, *args],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {out.stderr.strip()}")
        return out

    def import_busybox(self, namespace: str = "k8s.io") -> str:
        archive = build_busybox_oci(self.dir / "busybox-oci.tar")
        self.ctr("image", "import", str(archive), namespace=namespace)
        out = self.ctr("image", "ls", namespace=namespace).stdout
        for line in out.splitlines():
            cols = line.split()
            if cols and cols[0] == IMAGE:
                self.image_digest = cols[2]
        assert self.image_digest.startswith("sha256:"), out
        return self.image_digest

    def run(self, cid: str, *cmd, labels=None, annotations=None, cgroup: str = "",
            namespace: str = "k8s.io", env=()) -> None:
        """Start a detached container running `cmd` from the busybox image."""
        args = ["run", "-d", "--null-io"]
        for k, v in (labels or {}).items():
            args += ["--label", f"{k}={v}"]
        for k, v in (annotations or {}).items():
            args += ["--annotation", f"{k}={v}"]
        for e in env:
            args += ["--env", e]
        if cgroup:
            args += ["--cgroup", cgroup]
        self.ctr(*args, IMAGE, cid, *cmd, namespace=namespace)

    def task_pid(self, cid: str, namespace: str = "k8s.io") -> int:
        for line in self.ctr("task", "ls", namespace=namespace).stdout.splitlines()[1:]:
            cols = line.split()
            if cols[0] == cid:
                return int(cols[1])
        raise AssertionError(f"no task {cid}")

    def exec(self, cid: str, *cmd, namespace: str = "k8s.io", check: bool = True):
        return self.ctr("task", "exec", "--exec-id", "x" + uuid.uuid4().hex[:10], cid, *cmd,
                        namespace=namespace, check=check)

    def remove(self, cid: str, namespace: str = "k8s.io") -> None:
        self.ctr("task", "kill", "-s", "SIGKILL", cid, namespace=namespace, check=False)
        for _ in range(50):
            if self.ctr("task", "delete", cid, namespace=namespace, check=False).returncode == 0:
                break
            time.sleep(0.1)
        self.ctr("container", "delete", cid, namespace=namespace, check=False)


def pod_cgroup(pod_uid: str, cid: str, qos: str = "besteffort") -> str:
    """kubelet's cgroupfs-driver layout for a container."""
    return f"/kubepods/{qos}/pod{pod_uid}/{cid}"


class Pod:
    """A pod laid out as containerd's CRI plugin does it."""

    def __init__(self, ctd: Containerd, name: str, namespace: str, labels: dict[str, str]):
        self.ctd = ctd
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.uid = str(uuid.uuid4())
        self.sandbox_id = hashlib.sha256(f"sandbox-{self.uid}".encode()).hexdigest()
        self.containers: dict[str, str] = {}

    def start_sandbox(self) -> None:
        labels = dict(self.labels)
        labels.update({"io.cri-containerd.kind": "sandbox",
                       "io.kubernetes.pod.name": self.name,
                       "io.kubernetes.pod.namespace": self.namespace,
                       "io.kubernetes.pod.uid": self.uid})
        annotations = {"io.kubernetes.cri.container-type": "sandbox",
                       "io.kubernetes.cri.sandbox-id": self.sandbox_id,
                       "io.kubernetes.cri.sandbox-name": self.name,
                       "io.kubernetes.cri.sandbox-namespace": self.namespace}
        self.ctd.run(self.sandbox_id, "sleep", "3600", labels=labels, annotations=annotations,
                     cgroup=pod_cgroup(self.uid, self.sandbox_id))

    def start_container(self, name: str, *cmd) -> str:
        cid = hashlib.sha256(f"{self.uid}/{name}".encode()).hexdigest()
        labels = {"io.cri-containerd.kind": "container",
                  "io.kubernetes.container.name": name,
                  "io.kubernetes.pod.name": self.name,
                  "io.kubernetes.pod.namespace": self.namespace,
                  "io.kubernetes.pod.uid": self.uid}
        annotations = {"io.kubernetes.cri.container-type": "container",
                       "io.kubernetes.cri.container-name": name,
                       "io.kubernetes.cri.sandbox-id": self.sandbox_id,
                       "io.kubernetes.cri.image-name": IMAGE}
        self.ctd.run(cid, *cmd, labels=labels, annotations=annotations,
                     cgroup=pod_cgroup(self.uid, cid))
        self.containers[name] = cid
        return cid

    def remove(self) -> None:
        for cid in self.containers.values():
            self.ctd.remove(cid)
        self.ctd.remove(self.sandbox_id)
