"""Which container a process runs in, from its cgroup.

A container runtime puts each container in a cgroup named after the
container id; only the spelling differs:

    containerd (ctr, cgroupfs)     /k8s.io/<id>, /default/<id>
    kubelet, cgroupfs driver       /kubepods/<qos>/pod<uid>/<id>   (also crio-<id>)
    kubelet, systemd driver        /kubepods.slice/.../kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope
    Docker                         /docker/<id>, /system.slice/docker-<id>.scope
    CRI-O                          .../crio-<id>.scope
    Podman                         .../libpod-<id>.scope[/container]

in cgroup v1 (one line per hierarchy in /proc/<pid>/cgroup) and v2 (the
`0::` line).  A process in a nested container (Docker in Docker, a kind
node) has several ids on its path: the innermost, the last one, is its own.
Seen from inside a cgroup namespace, paths can start with `/..`.

Short-lived processes are gone from /proc before anyone reads them, but the
process sensor reports each one's cgroup v2 id (the inode of its cgroup
directory), and the directory outlives the process: `CgroupPaths` turns an
id back into a path through the kernel's file handles, or a walk of the tree.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger("tetrad.containers")

_HEX64 = re.compile(r"[0-9a-f]{64}")
# systemd scope names: <prefix><id>.scope; the conmon monitors of CRI-O and
# Podman have scopes of their own that are not the container.
_SCOPE = re.compile(r"(cri-containerd|docker|crio|cri-o|libpod)-([0-9a-f]{64})(?:\.scope)?")
_NOT_CONTAINER = ("crio-conmon-", "libpod-conmon-")
# the runtime each prefix belongs to, in Kubernetes' `runtime://id` spelling
_RUNTIME = {"cri-containerd": "containerd", "docker": "docker", "crio": "cri-o",
            "cri-o": "cri-o", "libpod": "podman"}
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
                      r"(?:\.slice)?$")
# containerd's own cgroup layout is /<containerd namespace>/<container id>,
# where ids are free-form; these namespaces are recognised without asking
DEFAULT_CONTAINERD_NAMESPACES = frozenset({"k8s.io", "default", "moby"})


@dataclass(frozen=True, slots=True)
class CgroupContainer:
    """A container found on a cgroup path."""
    id: str
    runtime: str = ""        # containerd, docker, cri-o, podman ("" when the layout does not say)
    pod_uid: str = ""        # the Kubernetes pod uid from a kubepods path, with dashes


def container_from_path(path: str,
                        containerd_namespaces=DEFAULT_CONTAINERD_NAMESPACES) -> CgroupContainer | None:
    """The innermost container on one cgroup path, or None."""
    parts = [p for p in path.split("/") if p and p != ".."]
    pod_uid = ""
    for part in parts:
        m = _POD_UID.search(part)
        if m:
            pod_uid = m.group(1).replace("_", "-")
    for i in range(len(parts) - 1, -1, -1):
        part = parts[i]
        if part.startswith(_NOT_CONTAINER):
            return None      # a runtime's monitor process, outside its container
        m = _SCOPE.fullmatch(part)
        if m:
            return CgroupContainer(m.group(2), _RUNTIME[m.group(1)], pod_uid)
        if _HEX64.fullmatch(part):
            runtime = ""
            if i > 0 and parts[i - 1] in ("docker", "moby"):
                runtime = "docker"
            elif i > 0 and parts[i - 1] in containerd_namespaces:
                runtime = "containerd"
            return CgroupContainer(part, runtime, pod_uid)
        if i > 0 and parts[i - 1] in containerd_namespaces and i == len(parts) - 1:
            return CgroupContainer(part, "containerd", pod_uid)
    return None


def pod_cgroup_of(path: str) -> str:
    """The cgroup path of the pod a kubelet-layout container path belongs to
    (`/kubepods/<qos>/pod<uid>`, `.../kubepods-<qos>-pod<uid>.slice`), or ""."""
    parts = path.split("/")
    for i in range(len(parts) - 1, 0, -1):
        if _POD_UID.search(parts[i]):
            return "/".join(parts[:i + 1])
    return ""


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {hierarchy: path}; the v2 hierarchy is "" and a
    v1 one is named by its controllers ("memory", "name=systemd", ...)."""
    out = {}
    for line in text.splitlines():
        num, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep and sep2:
            out["" if num == "0" and not controllers else controllers] = path
    return out


def container_from_proc_cgroup(text: str,
                               containerd_namespaces=DEFAULT_CONTAINERD_NAMESPACES
                               ) -> CgroupContainer | None:
    """The container of a process from the text of its /proc/<pid>/cgroup:
    the v2 path first, then the v1 hierarchies (a hybrid host may keep the v2
    path at the root while v1 controllers hold the container)."""
    paths = parse_proc_cgroup(text)
    order = sorted(paths, key=lambda h: (h != "", h != "name=systemd", h != "memory", h))
    for hierarchy in order:
        found = container_from_path(paths[hierarchy], containerd_namespaces)
        if found is not None:
            return found
    return None


def container_of_pid(procfs: str, pid: int,
                     containerd_namespaces=DEFAULT_CONTAINERD_NAMESPACES) -> CgroupContainer | None:
    try:
        with open(f"{procfs}/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    return container_from_proc_cgroup(text, containerd_namespaces)


class _FileHandle(ctypes.Structure):
    # struct file_handle with room for a kernfs handle: the 64-bit cgroup id
    _fields_ = [("handle_bytes", ctypes.c_uint32), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_uint64)]


_FILEID_KERNFS = 0xFE
_libc = ctypes.CDLL(None, use_errno=True)


class CgroupPaths:
    """cgroup v2 id (directory inode) -> path below the v2 root.

    The kernel opens a cgroup directory from its id (open_by_handle_at with a
    kernfs handle, which needs CAP_DAC_READ_SEARCH); where it refuses, a walk
    of the tree fills a cache instead, at most once per `rewalk_s`.
    """

    def __init__(self, root: str, rewalk_s: float = 1.0, clock=None):
        import time
        self.root = root.rstrip("/")
        self.rewalk_s = rewalk_s
        self.clock = clock or time.monotonic
        self._walked: dict[int, str] = {}
        self._last_walk = -1e9
        self._handles_work = True
        self._root_fd = -1

    def path_of(self, cgroup_id: int) -> str | None:
        if not cgroup_id or not self.root:
            return None
        if self._handles_work:
            path = self._by_handle(cgroup_id)
            if path is not None:
                return path
        path = self._walked.get(cgroup_id)
        if path is None and self.clock() - self._last_walk >= self.rewalk_s:
            self._walk()
            path = self._walked.get(cgroup_id)
        return path

    def _by_handle(self, cgroup_id: int) -> str | None:
        if self._root_fd < 0:
            try:
                self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                self._handles_work = False
                return None
        handle = _FileHandle(8, _FILEID_KERNFS, cgroup_id)
        fd = _libc.open_by_handle_at(self._root_fd, ctypes.byref(handle),
                                     os.O_RDONLY | os.O_DIRECTORY)
        if fd < 0:
            err = ctypes.get_errno()
            if err in (1, 22, 38, 95):   # EPERM, EINVAL, ENOSYS, EOPNOTSUPP: walk instead
                log.debug("cgroup file handles unavailable (%s); walking %s instead",
                          os.strerror(err), self.root)
                self._handles_work = False
            return None   # ESTALE/ENOENT: the cgroup is gone
        try:
            full = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        if full == self.root:
            return "/"
        if full.startswith(self.root + "/"):
            return full[len(self.root):]
        return None

    def _walk(self) -> None:
        self._last_walk = self.clock()
        found = {}
        for dirpath, _dirs, _files in os.walk(self.root):
            try:
                found[os.stat(dirpath).st_ino] = dirpath[len(self.root):] or "/"
            except OSError:
                pass
        self._walked = found

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
