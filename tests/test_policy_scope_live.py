"""Policies scoped to pods and containers, decided in the kernel by cgroup id,
with a real containerd and runc and a real daemon: a TracingPolicyNamespaced
sees only its namespace's pod, a podSelector only the matching pod, a
containerSelector only the matching container, host processes none; a
connect-deny and a device-deny policy with a podSelector refuse the pod's
connect and open (EPERM), not the host's.  Policy resources served by a Kubernetes API *emulator* (kmock,
not a real API server) are loaded, replaced and removed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from conftest import accepted, tetrad_cmd
from containerd_env import Pod
from k8s_emulator import KubeEmulator
from k8s_emulator import pod as api_pod
from policytools import wait_policies
from test_containers import ctd, marker  # noqa: F401  (the module's containerd)
from tetrad.features import detect

CHDIR = """apiVersion: cilium.io/v1alpha1
kind: {kind}
metadata:
  name: {name}
{namespace}spec:
{selectors}  kprobes:
  - call: sys_chdir
    syscall: true
    args:
    - index: 0
      type: string
    selectors:
    - matchArgs:
      - index: 0
        operator: Prefix
        values: ["/tmp/{prefix}-"]
"""


def chdir_policy(name, prefix, kind="TracingPolicy", namespace="", selectors=""):
    ns = f"  namespace: {namespace}\n" if namespace else ""
    return CHDIR.format(kind=kind, name=name, namespace=ns, selectors=selectors, prefix=prefix)


def chdirs(mark: str) -> str:
    """A shell line that calls chdir once per policy prefix (the directories do not exist)."""
    return "; ".join(f"cd /tmp/{p}-{mark} 2>/dev/null" for p in ("ns", "pod", "ctr")) + "; true"


def seen(events, mark: str) -> dict[str, set[str]]:
    """prefix -> where each chdir with this marker was reported: "namespace/pod/container" or "host"."""
    out: dict[str, set[str]] = {}
    for e in events:
        body = e.get("process_kprobe")
        if not body:
            continue
        path = body["args"][0].get("string_arg", "")
        if not path.endswith(f"-{mark}"):
            continue
        pod = body["process"].get("pod")
        where = f"{pod['namespace']}/{pod['name']}/{pod['container']['name']}" if pod else "host"
        out.setdefault(path.split("/")[2].split("-")[0], set()).add(where)
    return out


def start_pod(ctd, name, namespace, labels, container):
    pod = Pod(ctd, name, namespace, labels)
    ctd.pods.append(pod)
    pod.start_sandbox()
    cid = pod.start_container(container, "sleep", "3600")
    return pod, cid


def policy_list(d) -> list[dict]:
    out = subprocess.run(tetrad_cmd() + ["tracingpolicy", "list", "-o", "json",
                                         f"--server-address=unix://{d.sock}"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def wait_scopes(d, expected: dict[str, int], timeout=30):
    """Wait until each named policy covers that many container cgroups."""
    deadline = time.monotonic() + timeout
    while True:
        pols = {p["name"]: p for p in policy_list(d)}
        if all(pols.get(n, {}).get("scope_cgroups") == c for n, c in expected.items()):
            return pols
        if time.monotonic() > deadline:
            raise AssertionError(f"scopes not as expected {expected}: {pols}\n{d.log_text()[-3000:]}")
        time.sleep(0.1)


def test_namespaced_pod_and_container_scopes_select_in_the_kernel(ctd, start_daemon):  # noqa: F811
    xwing, xwing_cid = start_pod(ctd, "xwing", "default", {"app": "xwing"}, "spaceship")
    d = start_daemon(f"--containerd-address={ctd.socket}")
    for name, text in {
        "ns.yaml": chdir_policy("rebels-only", "ns", "TracingPolicyNamespaced", "rebels"),
        "pod.yaml": chdir_policy("xwing-only", "pod", selectors="  podSelector:\n    matchLabels:\n      app: xwing\n"),
        "ctr.yaml": chdir_policy("gunners-only", "ctr", selectors=(
            "  containerSelector:\n    matchExpressions:\n    - key: name\n      operator: In\n"
            "      values: [gunner]\n")),
    }.items():
        (d.policy_dir / name).write_text(text)
    wait_policies(d, 3, pred=lambda ps: all(p["state"] == "loaded" for p in ps))
    # a pod created while the policies are loaded: it joins their scopes as containerd announces it
    ywing, ywing_cid = start_pod(ctd, "ywing", "rebels", {"app": "ywing"}, "gunner")
    # a whole-pod scope holds the pod's cgroup and its container's; a container scope the container's
    pols = wait_scopes(d, {"rebels-only": 2, "xwing-only": 2, "gunners-only": 1})
    assert pols["xwing-only"]["scope"] == "pods app In xwing"
    assert pols["rebels-only"]["scope"] == "namespace rebels"

    mark = marker()
    for cid in (xwing_cid, ywing_cid):
        ctd.exec(cid, "sh", "-c", chdirs(mark))
    subprocess.run(["sh", "-c", chdirs(mark)], check=True)
    expected = {"ns": {"rebels/ywing/gunner"}, "pod": {"default/xwing/spaceship"},
                "ctr": {"rebels/ywing/gunner"}}
    d.wait_for(lambda evs: seen(evs, mark) == expected or None, timeout=30,
               what=f"exactly {expected}")
    time.sleep(1)      # nothing else arrives late (the host's and other pod's chdirs)
    assert seen(d.events(), mark) == expected

    # the pod goes: its cgroup leaves the scope
    ywing.remove()
    ctd.pods.remove(ywing)
    for d_ in (f"{ywing_cid}", ""):
        try:
            os.rmdir(f"{detect('/sys/kernel/btf/vmlinux', quick=True).cgroup_v2_root}/kubepods/besteffort/pod{ywing.uid}/{d_}".rstrip("/"))
        except OSError:
            pass
    wait_scopes(d, {"rebels-only": 0, "gunners-only": 0, "xwing-only": 2})
    text = subprocess.run(tetrad_cmd() + ["tracingpolicy", "list", f"--server-address=unix://{d.sock}"],
                          capture_output=True, text=True, check=True).stdout
    assert "    scope: namespace rebels (0 cgroups)" in text


def test_scoped_policy_without_containerd_matches_nothing(start_daemon, tmp_path):
    d = start_daemon(f"--containerd-address={tmp_path}/nothing.sock")
    (d.policy_dir / "pod.yaml").write_text(
        chdir_policy("any-pod", "pod", selectors="  podSelector: {}\n"))
    wait_policies(d, 1, pred=lambda ps: ps[0]["state"] == "loaded")
    unscoped = marker()
    (d.policy_dir / "all.yaml").write_text(chdir_policy("everyone", "ns"))
    wait_policies(d, 2, pred=lambda ps: all(p["state"] == "loaded" for p in ps))
    subprocess.run(["sh", "-c", chdirs(unscoped)], check=True)
    d.wait_for(lambda evs: seen(evs, unscoped).get("ns") == {"host"}, what="the unscoped policy's event")
    time.sleep(1)
    assert "pod" not in seen(d.events(), unscoped)     # the scoped one: nothing, not everything
    assert {p["name"]: p["scope_cgroups"] for p in policy_list(d) if "scope" in p} == {"any-pod": 0}


CONNECT_DENY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: awing-no-connect
spec:
  podSelector:
    matchLabels:
      app: awing
  kprobes:
  - call: tcp_connect
    syscall: false
    args:
    - index: 0
      type: sock
    selectors:
    - matchArgs:
      - index: 0
        operator: DAddr
        values: ["127.0.0.1/32"]
      - index: 0
        operator: DPort
        values: ["{port}"]
      matchActions:
      - action: Override
        argError: -1
"""

CONNECT = ("import socket, sys\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', int(sys.argv[1])))\n"
           "    print('connected')\nexcept OSError as e:\n    print('errno', e.errno)\n")


def connect_from(cgroup_dir: str | None, port: int) -> str:
    """connect() to the host's loopback from a process in `cgroup_dir` (a
    container's cgroup, joined before exec: the pod's cgroup, the host's network)."""
    join = f'echo $$ > "{cgroup_dir}/cgroup.procs" && ' if cgroup_dir else ""
    out = subprocess.run(["sh", "-c", f'{join}exec python3 -c "$0" {port}', CONNECT],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def test_connect_deny_with_a_pod_selector_blocks_only_that_pod(ctd, start_daemon):  # noqa: F811
    awing, awing_cid = start_pod(ctd, "awing", "default", {"app": "awing"}, "spaceship")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        d = start_daemon(f"--containerd-address={ctd.socket}")
        (d.policy_dir / "deny.yaml").write_text(CONNECT_DENY.format(port=port))
        wait_policies(d, 1, pred=lambda ps: ps[0]["state"] == "loaded")
        wait_scopes(d, {"awing-no-connect": 2})
        root = detect("/sys/kernel/btf/vmlinux", quick=True).cgroup_v2_root
        with open(f"/proc/{ctd.task_pid(awing_cid)}/cgroup") as f:
            pod_cgroup = root + [l[3:].strip() for l in f if l.startswith("0::")][0]
        assert connect_from(pod_cgroup, port) == "errno 1"      # EPERM, before the SYN
        assert connect_from(None, port) == "connected"           # the host: allowed
        assert accepted(srv) == 1
        verdicts = d.wait_for(lambda evs: [e["process_kprobe"] for e in evs if "process_kprobe" in e
                                           and e["process_kprobe"]["policy_name"] == "awing-no-connect"],
                              what="the refusal's event")
        assert verdicts[0]["action"] == "KPROBE_ACTION_OVERRIDE"
        assert verdicts[0]["process"]["pod"]["name"] == "awing"
    finally:
        srv.close()


DEVICE_DENY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: bwing-no-full
spec:
  podSelector:
    matchLabels:
      app: bwing
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: Equal
        values: ["{node}"]
      matchActions:
      - action: Override
        argError: -1
"""

OPEN = ("import sys\ntry:\n    open(sys.argv[1], 'rb').close()\n    print('opened')\n"
        "except OSError as e:\n    print('errno', e.errno)\n")


def open_from(cgroup_dir: str | None, path: str) -> str:
    join = f'echo $$ > "{cgroup_dir}/cgroup.procs" && ' if cgroup_dir else ""
    out = subprocess.run(["sh", "-c", f'{join}exec python3 -c "$0" "$1"', OPEN, path],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def test_device_deny_with_a_pod_selector_refuses_only_that_pod(ctd, start_daemon, tmp_path):  # noqa: F811
    bwing, bwing_cid = start_pod(ctd, "bwing", "default", {"app": "bwing"}, "spaceship")
    node = tmp_path / "full"
    os.mknod(node, 0o666 | 0o020000, os.makedev(1, 7))   # /dev/full's numbers
    os.chmod(tmp_path, 0o755)
    d = start_daemon(f"--containerd-address={ctd.socket}")
    (d.policy_dir / "deny.yaml").write_text(DEVICE_DENY.format(node=node))
    wait_policies(d, 1, pred=lambda ps: ps[0]["state"] == "loaded")
    wait_scopes(d, {"bwing-no-full": 2})
    root = detect("/sys/kernel/btf/vmlinux", quick=True).cgroup_v2_root
    with open(f"/proc/{ctd.task_pid(bwing_cid)}/cgroup") as f:
        pod_cgroup = root + [l[3:].strip() for l in f if l.startswith("0::")][0]
    assert open_from(pod_cgroup, str(node)) == "errno 1"      # EPERM, before the driver
    assert open_from(None, str(node)) == "opened"              # the host: allowed
    verdicts = d.wait_for(lambda evs: [e["process_kprobe"] for e in evs if "process_kprobe" in e
                                       and e["process_kprobe"]["policy_name"] == "bwing-no-full"],
                          what="the refusal's event")
    assert verdicts[0]["action"] == "KPROBE_ACTION_OVERRIDE"
    assert verdicts[0]["process"]["pod"]["name"] == "bwing"


def test_policy_resources_from_the_kubernetes_api_emulator(start_daemon, tmp_path):
    """Against a Kubernetes API emulator (kmock), not a real API server."""
    emulator = KubeEmulator()
    try:
        emulator.create(api_pod("xwing", "default", "node-1", "uid-1", labels={"app": "xwing"}))
        # a namespaced resource with an error: named by namespace/name and field (created
        # first: the emulator serves a resource only once an object of it exists)
        bad = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicyNamespaced",
               "metadata": {"name": "broken", "namespace": "rebels"},
               "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]},
                        "kprobes": [{"call": "sys_chdir", "syscall": True}]}}
        emulator.create(bad)
        cluster = {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy",
                   "metadata": {"name": "everyone"},
                   "spec": {"kprobes": [{"call": "sys_chdir", "syscall": True,
                                         "args": [{"index": 0, "type": "string"}],
                                         "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix",
                                                                       "values": ["/tmp/ns-"]}]}]}]}}
        emulator.create(cluster)
        d = start_daemon("--enable-k8s-api", f"--kubeconfig={emulator.kubeconfig(tmp_path / 'kubeconfig')}",
                         "--node-name=node-1", f"--containerd-address={tmp_path}/nothing.sock")
        pols = {p["name"]: p for p in wait_policies(d, 2, pred=lambda ps: any(p["state"] == "loaded" for p in ps))}
        assert (pols["everyone"]["file"], pols["everyone"]["source"]) == ("k8s:everyone", "k8s")
        assert pols["broken"]["state"] == "error" and pols["broken"]["error"] == (
            "k8s:rebels/broken: spec.podSelector.matchExpressions[0].values: operator In needs at least one value")
        mark = marker()
        subprocess.run(["sh", "-c", chdirs(mark)], check=True)
        d.wait_for(lambda evs: seen(evs, mark).get("ns") == {"host"}, what="the resource's events")

        # replaced: the new prefix is reported, the old one not
        emulator.patch(cluster, {"spec": {"kprobes": [dict(cluster["spec"]["kprobes"][0], selectors=[
            {"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/tmp/pod-"]}]}])]}})
        wait_policies(d, 2, pred=lambda ps: any(p["name"] == "everyone" and p["state"] == "loaded"
                                                and p.get("compile_s") is not None for p in ps)
                      and "policy everyone (k8s:everyone) unloaded" in d.log_text())
        mark = marker()
        subprocess.run(["sh", "-c", chdirs(mark)], check=True)
        d.wait_for(lambda evs: seen(evs, mark).get("pod") == {"host"}, what="the replaced resource's events")
        time.sleep(1)
        assert "ns" not in seen(d.events(), mark)

        # removed
        emulator.delete(cluster)
        emulator.delete(bad)
        wait_policies(d, 0, pred=lambda ps: ps == [])
        assert d.stop() == 0      # before the emulator, whose watches it holds open
    finally:
        emulator.close()


def test_pod_labels_from_the_api_emulator_drive_a_pod_selector(ctd, start_daemon, tmp_path):  # noqa: F811
    """Kubernetes mode against the API emulator (kmock): the policy is a resource,
    and the pod's labels as the API server has them (not containerd's) decide."""
    kwing, cid = start_pod(ctd, "kwing", "default", {"app": "kwing"}, "spaceship")
    emulator = KubeEmulator()
    try:
        api = api_pod(kwing.name, kwing.namespace, "node-1", kwing.uid,
                      labels={"app": "kwing", "tier": "fighter"},
                      containers={"spaceship": (cid, "busybox", "busybox@sha256:11")})
        emulator.create(api)
        emulator.create({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy",
                         "metadata": {"name": "fighters"},
                         "spec": {"podSelector": {"matchLabels": {"tier": "fighter"}},
                                  "kprobes": [{"call": "sys_chdir", "syscall": True,
                                               "args": [{"index": 0, "type": "string"}],
                                               "selectors": [{"matchArgs": [{
                                                   "index": 0, "operator": "Prefix",
                                                   "values": ["/tmp/pod-"]}]}]}]}})
        d = start_daemon(f"--containerd-address={ctd.socket}", "--enable-k8s-api",
                         f"--kubeconfig={emulator.kubeconfig(tmp_path / 'kubeconfig')}", "--node-name=node-1")
        wait_policies(d, 1, pred=lambda ps: ps[0]["state"] == "loaded")
        wait_scopes(d, {"fighters": 2})
        mark = marker()
        ctd.exec(cid, "sh", "-c", chdirs(mark))
        d.wait_for(lambda evs: seen(evs, mark).get("pod") == {"default/kwing/spaceship"},
                   what="the labelled pod's event")
        # relabelled in the API: out of the scope, in the kernel
        emulator.patch(api, {"metadata": {"labels": {"app": "kwing", "tier": None}}})
        wait_scopes(d, {"fighters": 0})
        mark = marker()
        ctd.exec(cid, "sh", "-c", chdirs(mark))
        time.sleep(1.5)
        assert "pod" not in seen(d.events(), mark)
        assert d.stop() == 0      # before the emulator, whose watches it holds open
    finally:
        emulator.close()


def test_a_container_created_in_a_selected_pod_is_covered_from_its_first_instruction(ctd, start_daemon):  # noqa: F811
    d = start_daemon(f"--containerd-address={ctd.socket}")
    (d.policy_dir / "pod.yaml").write_text(
        chdir_policy("ewing-only", "pod", selectors="  podSelector:\n    matchLabels:\n      app: ewing\n"))
    wait_policies(d, 1, pred=lambda ps: ps[0]["state"] == "loaded")
    pod = Pod(ctd, "ewing", "default", {"app": "ewing"})
    ctd.pods.append(pod)
    pod.start_sandbox()
    wait_scopes(d, {"ewing-only": 1})          # the pod's cgroup, from its sandbox
    mark = marker()
    # the container's very first process calls chdir: there is no time to learn its own cgroup
    pod.start_container("late", "sh", "-c", f"cd /tmp/pod-{mark} 2>/dev/null; sleep 3600")
    (ev,) = d.wait_for(lambda evs: [e["process_kprobe"] for e in evs if "process_kprobe" in e and
                                    e["process_kprobe"]["args"][0]["string_arg"] == f"/tmp/pod-{mark}"],
                       what="the first action of the new container")
    assert ev["process"]["pod"]["container"]["pid"] == 1 and ev["process"]["pod"]["name"] == "ewing"
    # decided by the pod's cgroup, in the kernel: a cgroup made in the pod behind
    # containerd's back, which the daemon never hears of, is in the scope too
    root = detect("/sys/kernel/btf/vmlinux", quick=True).cgroup_v2_root
    unknown = f"{root}/kubepods/besteffort/pod{pod.uid}/{os.urandom(32).hex()}"
    os.mkdir(unknown)
    try:
        mark = marker()
        subprocess.run(["sh", "-c", f'echo $$ > "{unknown}/cgroup.procs" && exec sh -c "cd /tmp/pod-{mark}; true"'],
                       check=True)
        d.wait_for(lambda evs: seen(evs, mark).get("pod"), what="the event of the unannounced cgroup")
    finally:
        os.rmdir(unknown)


def test_without_containerd_the_api_emulator_alone_scopes_a_policy(ctd, start_daemon, tmp_path):  # noqa: F811
    """Kubernetes mode with no containerd to ask (another runtime, or containerd
    away): the API server (here the kmock emulator) names the pod's containers,
    and their cgroups are found in the cgroup tree."""
    fwing, cid = start_pod(ctd, "fwing", "default", {"app": "fwing"}, "spaceship")
    emulator = KubeEmulator()
    try:
        emulator.create(api_pod(fwing.name, fwing.namespace, "node-1", fwing.uid, labels={"app": "fwing"},
                                containers={"spaceship": (cid, "busybox", "busybox@sha256:11")}))
        d = start_daemon(f"--containerd-address={tmp_path}/nothing.sock", "--enable-k8s-api",
                         f"--kubeconfig={emulator.kubeconfig(tmp_path / 'kubeconfig')}", "--node-name=node-1")
        (d.policy_dir / "pod.yaml").write_text(
            chdir_policy("fwing-only", "pod", selectors="  podSelector:\n    matchLabels:\n      app: fwing\n"))
        wait_policies(d, 1, pred=lambda ps: ps[0]["state"] == "loaded")
        wait_scopes(d, {"fwing-only": 2})        # the container's cgroup and its pod's
        mark = marker()
        ctd.exec(cid, "sh", "-c", chdirs(mark))
        subprocess.run(["sh", "-c", chdirs(mark)], check=True)
        d.wait_for(lambda evs: seen(evs, mark).get("pod") == {"default/fwing/spaceship"},
                   what="the pod's event")
        time.sleep(1)
        assert seen(d.events(), mark)["pod"] == {"default/fwing/spaceship"}   # not the host's
        assert d.stop() == 0      # before the emulator, whose watches it holds open
    finally:
        emulator.close()
