"""Pods and containers in events, with a real containerd and runc.

The suite's own containerd (private socket and directories) runs
Kubernetes-style pods laid out as the CRI plugin does; a real tetrad daemon
asks it over gRPC.  containerd is then stopped and restarted under the
daemon's feet."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from conftest import Daemon, execs_with, exits_of, of_type, tetrad_cmd
from containerd_env import IMAGE, Containerd, Pod
from k8s_emulator import KubeEmulator
from k8s_emulator import pod as api_pod
from tetrad.features import detect

LABELS = {"app": "xwing", "class": "xwing", "org": "alliance"}
RFC3339_S = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def ctd(tmp_path_factory):
    c = Containerd(tmp_path_factory.mktemp("containerd"))
    c.start()
    c.import_busybox()
    c.pods = []
    yield c
    if c.proc is None:
        c.start()
    for pod in c.pods:
        pod.remove()
    c.stop()
    cgroup_roots = [f"/sys/fs/cgroup/{d}" for d in os.listdir("/sys/fs/cgroup")] + ["/sys/fs/cgroup"]
    for pod in c.pods:
        for root in cgroup_roots:
            for d in (f"{root}/kubepods/besteffort/pod{pod.uid}",):
                try:
                    os.rmdir(d)
                except OSError:
                    pass


def new_pod(ctd, name="xwing", namespace="default", labels=LABELS,
            cmd=("sleep", "3600")) -> tuple[Pod, str]:
    pod = Pod(ctd, name, namespace, labels)
    ctd.pods.append(pod)
    pod.start_sandbox()
    cid = pod.start_container("spaceship", *cmd)
    return pod, cid


def execs_of(events, arguments: str) -> list[dict]:
    """process_exec events of processes run with exactly these arguments
    (ctr, runc and nsenter carry the marker too, but in other arguments)."""
    return [{"process_exec": e} for e in of_type(events, "process_exec")
            if e["process"].get("arguments") == arguments]


def in_container(mark: str) -> str:
    """The arguments of exec_in's shell."""
    return f'-c "echo $$ > /tmp/nspid-{mark}" {mark}'


def in_cgroup(mark: str) -> str:
    """The arguments of exec_in_cgroup_without_containerd's shell."""
    return f"-c : {mark}"


def exec_in(ctd, cid: str, mark: str) -> int:
    """`ctr task exec` a shell in the container; returns its pid inside the container."""
    init = ctd.task_pid(cid)
    ctd.exec(cid, "sh", "-c", f"echo $$ > /tmp/nspid-{mark}", mark)
    with open(f"/proc/{init}/root/tmp/nspid-{mark}") as f:
        return int(f.read())


def exec_in_cgroup_without_containerd(init_pid: int, mark: str) -> None:
    """Start a process in a container's cgroup and namespaces without asking
    containerd (for when it is down): join the cgroup, then nsenter."""
    root = detect("/sys/kernel/btf/vmlinux", quick=True).cgroup_v2_root
    with open(f"/proc/{init_pid}/cgroup") as f:
        path = [l[3:].strip() for l in f if l.startswith("0::")][0]
    subprocess.run(["sh", "-c", f'echo $$ > "{root}{path}/cgroup.procs" && '
                    f"exec nsenter -t {init_pid} -m -p -- /bin/sh -c : {mark}"], check=True)


def check_pod(ev: dict, pod: Pod, cid: str, digest: str, nspid: int | None = None) -> None:
    proc = ev["process"]
    assert proc["docker"] == cid[:31]
    p = proc["pod"]
    assert p["namespace"] == pod.namespace
    assert p["name"] == pod.name
    assert p["uid"] == pod.uid
    assert p["pod_labels"] == pod.labels
    assert p["workload"] == pod.name and p["workload_kind"] == "Pod"
    c = p["container"]
    assert c["id"] == f"containerd://{cid}"
    assert c["name"] == "spaceship"
    assert c["image"] == {"id": f"docker.io/tetrad-test/busybox@{digest}", "name": IMAGE}
    assert RFC3339_S.fullmatch(c["start_time"]), c["start_time"]
    if nspid is not None:
        assert c["pid"] == nspid
    assert c["pid"] != proc["pid"]     # the pid inside the container's pid namespace


def test_pod_of_exec_in_containers_started_before_and_after_the_daemon(ctd, start_daemon):
    # its main process, running before the daemon, keeps starting `sleep 0.3`s
    before, cid_before = new_pod(ctd, "xwing", cmd=("sh", "-c", "while :; do sleep 0.3; done"))
    d = start_daemon(f"--containerd-address={ctd.socket}")
    # created while the daemon runs: known from containerd's events before its first exec
    after, cid_after = new_pod(ctd, "ywing", "rebels", {"app": "ywing"})

    marks = {}
    for pod, cid in ((before, cid_before), (after, cid_after)):
        mark = marker()
        marks[mark] = (pod, cid, exec_in(ctd, cid, mark))
    host_mark = marker()
    subprocess.run(["/bin/true", host_mark], check=True)

    def found(events):
        got = {m: execs_of(events, in_container(m)) for m in marks}
        got[host_mark] = execs_with(events, host_mark)
        return all(got.values()) and got

    got = d.wait_for(found, timeout=30, what="execs in both pods and on the host")
    for mark, (pod, cid, nspid) in marks.items():
        (ev,) = got[mark]
        check_pod(ev["process_exec"], pod, cid, ctd.image_digest, nspid)
        assert ev["process_exec"]["process"]["binary"] == "/bin/sh"
        # its exit carries the same pod
        pid = ev["process_exec"]["process"]["pid"]
        (ex,) = d.wait_for(lambda evs: exits_of(evs, pid), timeout=30, what="the exit")
        check_pod(ex, pod, cid, ctd.image_digest, nspid)
    # a child of a process known from /proc at start-up: both in the pod
    (child,) = d.wait_for(lambda evs: [e for e in execs_of(evs, "0.3")
                                       if e["process_exec"]["process"].get("docker")][:1],
                          timeout=30, what="a sleep started by the container's main process")
    check_pod(child["process_exec"], before, cid_before, ctd.image_digest)
    parent = child["process_exec"]["parent"]
    assert "procFS" in parent["flags"] and parent["pod"]["container"]["pid"] == 1
    assert parent["pod"]["name"] == before.name and parent["docker"] == cid_before[:31]
    (host,) = got[host_mark]
    assert "pod" not in host["process"]
    assert "docker" not in host["process"]
    # the second pod was announced by containerd's event stream: no exec had to ask
    status = fresh_status(d)
    assert status["containerd_connected"] is True
    assert status["containerd_events"] > 0
    assert status.get("lookups_on_demand", 0) == 0
    probe = subprocess.run(tetrad_cmd() + ["probe", f"--server-address=unix://{d.sock}"],
                           capture_output=True, text=True, check=True).stdout
    assert f"containerd {ctd.socket}: connected, " in probe


def containers_status(d) -> dict:
    return json.loads(d.status_file.read_text())["containers"]


def fresh_status(d) -> dict:
    """The containers part of a status file written after this call."""
    now = time.time()
    d.wait_for(lambda _: d.status_file.stat().st_mtime > now, timeout=30, what="a new status file")
    return containers_status(d)


def warnings_about_containerd(d) -> list[str]:
    return [l for l in d.log_text().splitlines() if "unavailable" in l and "containerd" in l]


def test_containerd_stopped_and_restarted_under_the_daemon(ctd, start_daemon, tmp_path):
    pod, cid = new_pod(ctd, "awing")
    init = ctd.task_pid(cid)
    d = start_daemon(f"--containerd-address={ctd.socket}")
    (tmp_path / "second").mkdir()
    d2 = None
    ctd.stop()
    try:
        # events keep flowing while containerd is away (its retries go on meanwhile)
        deadline = time.monotonic() + 4
        host_marks = []
        while time.monotonic() < deadline:
            host_marks.append(marker())
            subprocess.run(["/bin/true", host_marks[-1]], check=True)
            time.sleep(0.5)
        known = marker()
        exec_in_cgroup_without_containerd(init, known)
        d.wait_for(lambda evs: all(execs_with(evs, m) for m in host_marks)
                   and execs_of(evs, in_cgroup(known)),
                   timeout=30, what="events while containerd is down")
        # a container described before the outage keeps its pod
        (ev,) = execs_of(d.events(), in_cgroup(known))
        check_pod(ev["process_exec"], pod, cid, ctd.image_digest)
        # a daemon that starts now has nothing cached: the container, but no pod
        d2 = Daemon(tmp_path / "second", [f"--containerd-address={ctd.socket}"])
        d2.wait_ready()
        fresh = marker()
        exec_in_cgroup_without_containerd(init, fresh)
        (ev,) = d2.wait_for(lambda evs: execs_of(evs, in_cgroup(fresh)), timeout=30)
        assert ev["process_exec"]["process"]["docker"] == cid[:31]
        assert "pod" not in ev["process_exec"]["process"]
        status = fresh_status(d)
        assert status["containerd_connected"] is False and status["containerd_errors"] >= 2
        assert len(warnings_about_containerd(d)) == 1, d.log_text()
    except BaseException:
        if d2 is not None:
            d2.stop()
        raise
    finally:
        ctd.start()
    # back: a new pod is named again, and the daemon that never saw containerd learns it
    d.wait_for(lambda _: containers_status(d)["containerd_connected"],
               timeout=30, what="reconnection to containerd")
    newer, newer_cid = new_pod(ctd, "bwing", labels={"app": "bwing"})
    mark = marker()
    nspid = exec_in(ctd, newer_cid, mark)
    (ev,) = d.wait_for(lambda evs: execs_of(evs, in_container(mark)), timeout=30)
    check_pod(ev["process_exec"], newer, newer_cid, ctd.image_digest, nspid)
    later = marker()
    d2.wait_for(lambda _: containers_status(d2)["containerd_connected"],
                timeout=30, what="first connection to containerd")
    nspid = exec_in(ctd, cid, later)
    (ev,) = d2.wait_for(lambda evs: execs_of(evs, in_container(later)), timeout=30)
    check_pod(ev["process_exec"], pod, cid, ctd.image_digest, nspid)
    assert "is back" in d.log_text()
    assert len(warnings_about_containerd(d)) == 1
    assert d2.stop() == 0


def test_hung_containerd_never_stalls_the_event_path(ctd, start_daemon):
    d = start_daemon(f"--containerd-address={ctd.socket}")
    d.wait_for(lambda _: containers_status(d)["containerd_connected"], timeout=30,
               what="connection to containerd")
    # a container cgroup containerd has not described yet (here: none it knows at all)
    root = detect("/sys/kernel/btf/vmlinux", quick=True).cgroup_v2_root
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    pod_dir = f"{root}/kubepods/besteffort/pod{uuid.uuid4()}"
    os.makedirs(f"{pod_dir}/{cid}")
    os.kill(ctd.proc.pid, signal.SIGSTOP)     # containerd hangs: calls neither fail nor answer
    try:
        mark, host_mark = marker(), marker()
        subprocess.run(["sh", "-c", f'echo $$ > "{pod_dir}/{cid}/cgroup.procs" && '
                        f"exec /bin/sh -c : {mark}"], check=True)
        subprocess.run(["/bin/true", host_mark], check=True)
        got = d.wait_for(lambda evs: execs_with(evs, host_mark) and execs_of(evs, in_cgroup(mark)),
                         timeout=30, what="events while containerd hangs")
        (ev,) = got
        assert ev["process_exec"]["process"]["docker"] == cid[:31]
        assert "pod" not in ev["process_exec"]["process"]
        d.wait_for(lambda _: not containers_status(d)["containerd_connected"], timeout=30,
                   what="the hang noticed")
        # the exec gave up waiting after 0.1 s: it did not wait for the call in
        # flight, which only ended at its 2 s deadline
        assert fresh_status(d)["lookups_late"] == 1
        assert len(warnings_about_containerd(d)) == 1
    finally:
        os.kill(ctd.proc.pid, signal.SIGCONT)
        os.rmdir(f"{pod_dir}/{cid}")
        os.rmdir(pod_dir)
    d.wait_for(lambda _: containers_status(d)["containerd_connected"], timeout=30,
               what="containerd answering again")
    assert "is back" in d.log_text()


def test_kubernetes_mode_takes_labels_and_workload_from_the_api(ctd, start_daemon, tmp_path):
    """Against a Kubernetes API emulator (kmock), not a real API server."""
    labels = {"app": "xwing", "pod-template-hash": "5f7c9d8b4"}
    pod, cid = new_pod(ctd, "xwing-5f7c9d8b4-x2x7q", labels=labels)
    emulator = KubeEmulator()
    try:
        api_labels = dict(labels, tier="fighter")      # the API server's labels win
        emulator.create(api_pod(pod.name, pod.namespace, "node-1", pod.uid, labels=api_labels,
                                owner=("ReplicaSet", "xwing-5f7c9d8b4"),
                                containers={"spaceship": (cid, IMAGE, f"{IMAGE}@sha256:1234")}))
        d = start_daemon(f"--containerd-address={ctd.socket}", "--enable-k8s-api",
                         f"--kubeconfig={emulator.kubeconfig(tmp_path / 'kubeconfig')}",
                         "--node-name=node-1")
        mark = marker()
        nspid = exec_in(ctd, cid, mark)
        (ev,) = d.wait_for(lambda evs: execs_of(evs, in_container(mark)), timeout=30)
        p = ev["process_exec"]["process"]["pod"]
        assert p["pod_labels"] == api_labels
        assert (p["workload"], p["workload_kind"]) == ("xwing", "Deployment")
        assert p["container"] == {"id": f"containerd://{cid}", "name": "spaceship",
                                  "image": {"id": f"{IMAGE}@sha256:1234", "name": IMAGE},
                                  "start_time": "2026-01-02T03:04:05Z", "pid": nspid}
        assert fresh_status(d)["k8s"]["pods"] == 1
        assert d.stop() == 0      # before the emulator, whose watches it holds open
        # without containerd, the API server alone names the pod
        (tmp_path / "no-containerd").mkdir()
        d2 = Daemon(tmp_path / "no-containerd", [
            f"--containerd-address={tmp_path}/nothing.sock", "--enable-k8s-api",
            f"--kubeconfig={tmp_path / 'kubeconfig'}", "--node-name=node-1"])
        try:
            d2.wait_ready()
            mark = marker()
            nspid = exec_in(ctd, cid, mark)
            (ev,) = d2.wait_for(lambda evs: execs_of(evs, in_container(mark)), timeout=30)
            p = ev["process_exec"]["process"]["pod"]
            assert (p["namespace"], p["name"], p["uid"]) == (pod.namespace, pod.name, pod.uid)
            assert (p["workload"], p["workload_kind"], p["pod_labels"]) == ("xwing", "Deployment",
                                                                            api_labels)
            assert p["container"]["name"] == "spaceship" and p["container"]["pid"] == nspid
            # no containerd on this "host": said once, calmly, not as a warning
            assert f"no containerd at {tmp_path}/nothing.sock" in d2.log_text()
            assert warnings_about_containerd(d2) == []
        finally:
            assert d2.stop() == 0
    finally:
        emulator.close()


def test_kubernetes_mode_without_a_usable_config_is_a_clear_error(start_daemon, tmp_path):
    d = start_daemon("--enable-k8s-api", f"--kubeconfig={tmp_path}/missing", ready=False)
    assert d.proc.wait(60) == 1
    assert f"--enable-k8s-api: cannot configure the Kubernetes client from {tmp_path}/missing" \
        in d.log_text()
