"""The daemon's unix socket: permissions, a stalled client that must not
slow the daemon, bad requests, and the tracingpolicy commands against a
fake policy manager (unit level: the real engine lives elsewhere)."""

import json
import os
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import of_type, tetrad_cmd
from userside import getevents, marker_binary, status, wait_subscribers

from tetrad.api import client, commands, protocol
from tetrad.api.server import ApiServer

CONNECT_AS = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("refused", e.errno); sys.exit(0)
s.sendall(b'{"op":"status"}\\n')
print("ok", json.loads(s.makefile().readline())["ok"])
"""


@pytest.fixture
def public_dir():
    """A directory others may traverse, so that only the socket's own mode decides."""
    d = tempfile.mkdtemp(prefix="tetrad-sock-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    for p in Path(d).iterdir():
        p.unlink()
    os.rmdir(d)


def test_socket_mode_owner_and_refusal_of_others(start_daemon, public_dir):
    sock = public_dir / "tetrad.sock"
    d = start_daemon(f"--server-address=unix://{sock}", ready=False)
    d.status_file = public_dir / "status.json"
    d.sock = sock
    d.wait_ready()
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == 0
    try:
        import grp
        expected_gid = grp.getgrnam("tetrad").gr_gid
    except KeyError:
        expected_gid = 0
    assert st.st_gid == expected_gid

    def as_user(gid):
        r = subprocess.run(["/usr/bin/python3", "-c", CONNECT_AS, str(sock)], user=65534, group=gid,
                           extra_groups=[], capture_output=True, text=True, timeout=20)
        return r.stdout.strip()
    assert as_user(65534) == "refused 13"                 # nobody, not in the socket's group
    assert as_user(expected_gid) == "ok True"             # the same user with the group gets in
    r = subprocess.run(tetrad_cmd() + ["status", f"--server-address=unix://{sock}"], user=65534, group=65534,
                       extra_groups=[], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "TETRAD_CONFIG_DIR": str(public_dir)})
    assert r.returncode == 1 and f"permission denied on {sock}: run as root or as a member of group tetrad" \
        in r.stderr, r.stderr


def test_stalled_client_never_blocks_the_daemon(start_daemon, tmp_path):
    marker = marker_binary(tmp_path)
    # the kernel wakes the daemon once per batch of records, so a client must
    # absorb bursts of a few hundred events; the stalled one still overflows
    d = start_daemon("--api-client-queue=512")
    stalled = socket.socket(socket.AF_UNIX)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(str(d.sock))
    stalled.sendall(protocol.encode({"op": "getevents", "args": {}}))
    healthy = getevents(d, "--process", marker.name, "-o", "compact")
    try:
        wait_subscribers(d, 2)
        # far more than the stalled client's socket, output buffer and queue can hold
        subprocess.run(["/bin/sh", "-c", f"for i in $(seq 1500); do {marker} storm$i; done"], check=True)
        healthy.wait_for(lambda l: "storm1500" in l and "\U0001F4A5" in l, timeout=60, what="last marker exit")
        exported = d.wait_for(lambda evs: [e for e in of_type(evs, "process_exit")
                                           if e["process"].get("arguments") == "storm1500"], timeout=20)
        assert exported
        st = status(d)               # the daemon still answers while the client is stalled
        assert st["api"]["dropped_for_slow_clients"] > 0
        # the healthy client lost nothing
        ours = [l for l in healthy.lines if "storm" in l]
        assert len(ours) == 3000
        # the stalled client, reading at last, is told what it missed
        stalled.settimeout(5)
        got = b""
        deadline = time.monotonic() + 20
        while b"tetrad_notice" not in got and time.monotonic() < deadline:
            chunk = stalled.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        notices = [json.loads(l) for l in got.split(b"\n") if b"tetrad_notice" in l]
        assert notices and notices[0]["tetrad_notice"]["dropped"] > 0
        assert "fell behind" in notices[0]["tetrad_notice"]["message"]
    finally:
        healthy.stop()
        stalled.close()


def test_bad_requests(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(daemon.sock))
        s.sendall(b"not json\n")
        assert json.loads(s.makefile().readline()) == {
            "ok": False, "error": 'bad request: expected {"op": ..., "args": {...}}'}
    with pytest.raises(client.ApiError, match="unknown command 'tracingpolicy.list'.*serves: getevents, status"):
        client.call(f"unix://{daemon.sock}", "tracingpolicy.list")
    with pytest.raises(client.ApiError, match='allow_list\\[0\\]: unknown key "binary"'):
        list(client.stream_events(f"unix://{daemon.sock}", {"allow_list": [{"binary": ["x"]}]}))


class FakePolicyManager:
    def __init__(self):
        self.policies = {"base": "enabled"}

    def list(self):
        return [{"name": n, "state": s} for n, s in sorted(self.policies.items())]

    def add(self, path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        self.policies[Path(path).stem] = "enabled"

    def delete(self, name):
        self.policies.pop(name)

    def enable(self, name):
        self._set(name, "enabled")

    def disable(self, name):
        self._set(name, "disabled")

    def _set(self, name, state):
        if name not in self.policies:
            raise LookupError(f"tracing policy {name!r} not found")
        self.policies[name] = state


class FakeDaemon:
    def __init__(self):
        self.policy_manager = FakePolicyManager()

    def status(self):
        return {"policies": self.policy_manager.list()}


@pytest.fixture
def fake_server(public_dir):
    server = ApiServer(f"unix://{public_dir}/t.sock")
    commands.register(server, FakeDaemon())
    server.start()
    stop = threading.Event()

    def loop():                      # stands in for the daemon's poll loop
        while not stop.is_set():
            server.run_commands()
            time.sleep(0.01)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield f"unix://{public_dir}/t.sock"
    stop.set()
    t.join()
    server.stop()


def test_tracingpolicy_commands_with_a_fake_manager(fake_server, tmp_path, capsys):
    from tetrad.__main__ import main
    policy = tmp_path / "extra.yaml"
    policy.write_text("kind: TracingPolicy\n")
    assert main(["tracingpolicy", "add", str(policy), f"--server-address={fake_server}"]) == 0
    assert main(["tracingpolicy", "disable", "base", f"--server-address={fake_server}"]) == 0
    capsys.readouterr()
    assert main(["tracingpolicy", "list", f"--server-address={fake_server}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [l.split() for l in out] == [["base", "disabled"], ["extra", "enabled"]]
    assert main(["tracingpolicy", "enable", "nope", f"--server-address={fake_server}"]) == 1
    assert "tracing policy 'nope' not found" in capsys.readouterr().err
    assert main(["tracingpolicy", "delete", "extra", f"--server-address={fake_server}"]) == 0
    assert main(["tracingpolicy", "add", str(tmp_path / "missing.yaml"), f"--server-address={fake_server}"]) == 1
    assert "missing.yaml: no such file" in capsys.readouterr().err
    assert client.call(fake_server, "status") == {"policies": [{"name": "base", "state": "disabled"}]}


def test_a_second_daemon_on_the_same_socket_is_refused(daemon, start_daemon):
    second = start_daemon(f"--server-address=unix://{daemon.sock}",
                          f"--export-filename={daemon.workdir}/second.log", ready=False)
    assert second.proc.wait(60) != 0
    assert "another daemon is already listening on this socket" in second.log_text()
    assert client.call(f"unix://{daemon.sock}", "status")["pid"] == daemon.proc.pid


CALL_AS = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"op": sys.argv[2], "args": {"name": "base"}}).encode() + b"\\n")
print(s.makefile().readline().strip())
"""


def test_policy_changes_need_root(fake_server):
    path = fake_server[len("unix://"):]

    def call_as_group_member(op):     # uid 65534 in the socket's group (root's group here)
        r = subprocess.run(["/usr/bin/python3", "-c", CALL_AS, path, op], user=65534, group=0,
                           extra_groups=[], capture_output=True, text=True, timeout=20)
        return json.loads(r.stdout)
    assert call_as_group_member("tracingpolicy.list") == {"ok": True, "result": [{"name": "base", "state": "enabled"}]}
    assert call_as_group_member("tracingpolicy.disable") == {
        "ok": False, "error": "tracingpolicy.disable needs root (uid 65534 may only read)"}
    assert client.call(fake_server, "tracingpolicy.list") == [{"name": "base", "state": "enabled"}]
