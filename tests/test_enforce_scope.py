"""Which processes cgroup enforcement applies to, from the policy's
selectors, with a real daemon: matchNamespaces (In and NotIn host_ns, decided
from the caller's namespaces at each call), matchBinaries NotIn, and
matchPIDs In.  A selector that names a process must refuse exactly that
process: each test shows one refused and one let through.

Policies are narrowed to device nodes in the test's tmp dir or to the port
of the test's own listener, so no other process on the machine is refused.
(Pods and containers, through cgroup ids, are another suite's.)"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import uuid

import pytest

from conftest import accepted
from policytools import start_with_policies, status, wait_policies

HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  kprobes:\n"
OPEN = "import sys\ntry:\n    open(sys.argv[1], 'rb').close(); print('ok')\nexcept OSError as e:\n    print('errno', e.errno)"
CONNECT = ("import socket, sys\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', int(sys.argv[1])))\n"
           "    print('connected')\nexcept OSError as e:\n    print('errno', e.errno)")


def device_policy(name, exe, node, namespaces):
    return (HEAD.format(name=name) +
            "  - call: sys_openat\n    syscall: true\n    args:\n    - index: 1\n      type: string\n"
            f"    selectors:\n    - matchBinaries:\n      - operator: In\n        values: [\"{exe}\"]\n"
            f"      matchNamespaces:\n{namespaces}"
            f"      matchArgs:\n      - index: 1\n        operator: Equal\n        values: [\"{node}\"]\n"
            "      matchActions:\n      - action: Override\n        argError: -1\n")


def connect_policy(name, port, scope):
    return (HEAD.format(name=name) +
            "  - call: tcp_connect\n    syscall: false\n    args:\n    - index: 0\n      type: sock\n"
            f"    selectors:\n    - {scope.strip()}\n"
            f"      matchArgs:\n      - index: 0\n        operator: DPort\n        values: [\"{port}\"]\n"
            "      matchActions:\n      - action: Override\n        argError: -1\n")


def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)
    return srv


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scope")
    os.chmod(tmp, 0o755)
    node = tmp / "full"
    os.mknod(node, 0o666 | 0o020000, os.makedev(1, 7))
    exes = {}
    for tag in ("ns-out", "ns-in", "not-in"):
        exes[tag] = str(tmp / f"py-{tag}-{uuid.uuid4().hex[:8]}")
        shutil.copy(os.path.realpath("/usr/bin/python3"), exes[tag])
    srv_bin, srv_pid = listener(), listener()
    net = lambda op: f"      - namespace: Net\n        operator: {op}\n        values: [\"host_ns\"]\n"
    d = start_with_policies(tmp / "d", {
        "ns-out.yaml": device_policy("ns-out", exes["ns-out"], node, net("NotIn")),
        "ns-in.yaml": device_policy("ns-in", exes["ns-in"], node, net("In")),
        "not-in.yaml": connect_policy("not-in", srv_bin.getsockname()[1],
                                      f"matchBinaries:\n      - operator: NotIn\n        values: [\"{exes['not-in']}\"]"),
    })
    yield d, exes, str(node), srv_bin, srv_pid
    d.stop()
    srv_bin.close()
    srv_pid.close()


def run(*cmd):
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_loaded_as_cgroup_rules(env):
    d, *_ = env
    pols = status(d)["policies"]
    assert all(p["state"] == "loaded" and [h["backend"] for h in p["hooks"]] == ["cgroup-bpf"] for p in pols), pols


def test_match_namespaces_not_in_host_refuses_only_in_another_namespace(env):
    _, exes, node, _, _ = env
    assert run(exes["ns-out"], "-c", OPEN, node) == "ok"                         # the host's net namespace
    assert run("unshare", "--net", exes["ns-out"], "-c", OPEN, node) == f"errno {errno.EPERM}"


def test_match_namespaces_in_host_refuses_only_in_the_host_namespace(env):
    _, exes, node, _, _ = env
    assert run(exes["ns-in"], "-c", OPEN, node) == f"errno {errno.EPERM}"
    assert run("unshare", "--net", exes["ns-in"], "-c", OPEN, node) == "ok"


def test_match_binaries_not_in_spares_only_the_named_binary(env):
    _, exes, _, srv, _ = env
    port = srv.getsockname()[1]
    assert run(exes["not-in"], "-c", CONNECT, str(port)) == "connected"
    assert run("/usr/bin/python3", "-c", CONNECT, str(port)) == f"errno {errno.EPERM}"
    assert accepted(srv) == 1


def test_match_pids_in_refuses_only_that_process(env):
    d, _, _, _, srv = env
    port = srv.getsockname()[1]
    paused = "import sys; sys.stdin.readline()\n" + CONNECT
    named = subprocess.Popen(["/usr/bin/python3", "-c", paused, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen(["/usr/bin/python3", "-c", paused, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        (d.policy_dir / "pids.yaml").write_text(connect_policy(
            "pids", port, f"matchPIDs:\n      - operator: In\n        values: [{named.pid}]"))
        wait_policies(d, 4, pred=lambda ps: any(p["name"] == "pids" and p["state"] == "loaded" for p in ps))
        assert named.communicate("go\n", timeout=30)[0].strip() == f"errno {errno.EPERM}"
        assert other.communicate("go\n", timeout=30)[0].strip() == "connected"
        assert accepted(srv) == 1
    finally:
        named.kill()
        other.kill()
