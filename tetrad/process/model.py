"""A process as tetrad knows it, and its Tetragon JSON form (`Process` in
Tetragon's API: snake_case keys, zero values omitted as protobuf JSON does,
wrapper types such as pid/uid/auid/tid always present)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from functools import lru_cache

from . import flags as pflags

CAPABILITIES = (
    "CAP_CHOWN", "DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # Tetragon's enum spells capability 1 "DAC_OVERRIDE", without the prefix

SECUREBITS = ((1, "SecBitNoRoot"), (2, "SecBitNoRootLocked"), (4, "SecBitNoSetUidFixup"),
              (8, "SecBitNoSetUidFixupLocked"), (16, "SecBitKeepCaps"),
              (32, "SecBitKeepCapsLocked"), (64, "SecBitNoCapAmbientRaise"),
              (128, "SecBitNoCapAmbientRaiseLocked"))

NAMESPACE_NAMES = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time",
                   "time_for_children", "cgroup", "user")


def exec_id(node: str, ktime: int, pid: int) -> str:
    """Tetragon's exec_id: base64 of "node:ktime:pid"."""
    return base64.b64encode(f"{node}:{ktime}:{pid}".encode()).decode()


@lru_cache(maxsize=256)
def cap_names(mask: int) -> tuple[str, ...]:
    return tuple(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def format_arguments(argv: list[str]) -> str:
    """argv[1:] joined by spaces, an argument holding a space in double quotes."""
    return " ".join(f'"{a}"' if " " in a else a for a in argv)


@dataclass(slots=True, eq=False)
class Process:
    exec_id: str
    pid: int
    tid: int
    ktime: int
    start_time: str
    uid: int
    auid: int
    cwd: str
    binary: str
    arguments: str
    flags: int
    parent_exec_id: str = ""
    nspid: int = 0
    cgroup_id: int = 0
    creds: tuple = ()       # uid gid euid egid suid sgid fsuid fsgid securebits
    caps: tuple = ()        # permitted effective inheritable
    ns: tuple = ()          # inums in NAMESPACE_NAMES order
    refcnt: int = 1         # 1 while it runs, +1 per known child
    exited: bool = False
    pod: dict | None = None
    docker: str = ""
    _json: dict | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)

    # The JSON object is built once per process and kept, serialized too:
    # a parent appears in every event of its children.  `refcnt` changes
    # over a process's life, so it is added per event, last.
    def to_json(self, host_ns: tuple = (), with_creds: bool = True, with_ns: bool = True) -> dict:
        """The Tetragon `Process` object."""
        if self._json is None:
            self._json = self._build_json(host_ns, with_creds, with_ns)
        out = dict(self._json)
        if self.refcnt > 0:
            out["refcnt"] = self.refcnt
        return out

    def to_text(self, host_ns: tuple = (), with_creds: bool = True, with_ns: bool = True) -> str:
        """`to_json()` serialized, from a cached prefix."""
        if self._text is None:
            if self._json is None:
                self._json = self._build_json(host_ns, with_creds, with_ns)
            self._text = self._encode_json(host_ns)
        if self.refcnt > 0:
            return f'{self._text},"refcnt":{self.refcnt}}}'
        return self._text + "}"

    def invalidate(self) -> None:
        """Forget the cached JSON after a change to what it shows (e.g. pod)."""
        self._json = None
        self._text = None

    def _encode_json(self, host_ns) -> str:
        """_json serialized without its closing brace; the namespace and
        credential objects, shared by most processes, come pre-encoded."""
        parts = []
        for key, value in self._json.items():
            if key == "ns":
                text = _namespaces(self.ns, host_ns)[1]
            elif key == "process_credentials":
                text = _credentials(self.creds, self.caps)[1]
            else:
                text = _encode(value)
            parts.append(f'"{key}":{text}')
        return "{" + ",".join(parts)

    def _build_json(self, host_ns, with_creds, with_ns) -> dict:
        j: dict = {"exec_id": self.exec_id, "pid": self.pid, "uid": self.uid}
        if self.cwd:
            j["cwd"] = self.cwd
        j["binary"] = self.binary
        if self.arguments:
            j["arguments"] = self.arguments
        words = pflags.to_words(self.flags)
        if words:
            j["flags"] = words
        j["start_time"] = self.start_time
        j["auid"] = self.auid
        if self.pod:
            j["pod"] = self.pod
        if self.docker:
            j["docker"] = self.docker
        if self.parent_exec_id:
            j["parent_exec_id"] = self.parent_exec_id
        if with_ns and self.ns and any(self.ns):
            j["ns"] = _namespaces(self.ns, host_ns)[0]
        j["tid"] = self.tid
        if with_creds and self.creds:
            j["process_credentials"] = _credentials(self.creds, self.caps)[0]
        return j


# Shared, read-only objects: most processes have the same namespaces and
# credentials, so each distinct set is built and encoded once.
@lru_cache(maxsize=1024)
def _namespaces(ns: tuple, host_ns: tuple) -> tuple[dict, str]:
    obj = {name: ({"inum": inum, "is_host": True}
                  if host_ns and inum == host_ns[i] else {"inum": inum})
           for i, (name, inum) in enumerate(zip(NAMESPACE_NAMES, ns)) if inum}
    return obj, _encode(obj)


@lru_cache(maxsize=1024)
def _credentials(creds: tuple, caps: tuple) -> tuple[dict, str]:
    ids = ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid")
    obj: dict = dict(zip(ids, creds[:8]))
    secure = [name for bit, name in SECUREBITS if creds[8] & bit]
    if secure:
        obj["securebits"] = secure
    sets = {key: list(cap_names(mask)) for key, mask in zip(("permitted", "effective", "inheritable"), caps)}
    sets = {key: names for key, names in sets.items() if names}
    if sets:
        obj["caps"] = sets
    return obj, _encode(obj)
