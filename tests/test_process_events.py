"""Process exec/exit events from the real kernel, through the whole daemon."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

from conftest import execs_with, exits_of, of_type


def marker() -> str:
    return "m" + uuid.uuid4().hex[:12]


def test_exec_and_exit_of_a_command(daemon, tmp_path):
    mark = marker()
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    os.chmod(tmp_path, 0o755)
    args = ["/bin/sh", "-c", "exit 3", mark, "a b", "c\nd"]
    p = subprocess.Popen(args, cwd=workdir, user=65534, group=65534)
    assert p.wait() == 3

    def found(events):
        execs = execs_with(events, mark)
        return execs and exits_of(events, p.pid) and (execs, exits_of(events, p.pid))

    execs, exits = daemon.wait_for(found, what="exec+exit of the command")
    assert len(execs) == 1 and len(exits) == 1
    proc = execs[0]["process"]
    assert proc["binary"] == "/bin/sh"
    assert proc["arguments"] == f'-c "exit 3" {mark} "a b" c\nd'
    assert proc["cwd"] == str(workdir)
    assert proc["uid"] == 65534
    assert proc["pid"] == p.pid == proc["tid"]
    assert proc["flags"] == "execve"
    assert proc["process_credentials"]["euid"] == 65534
    # the parent is this test process (python), known since before the daemon started
    parent = execs[0]["parent"]
    assert parent["pid"] == os.getpid()
    assert proc["parent_exec_id"] == parent["exec_id"]
    assert "procFS" in parent["flags"]
    # exit: same process, status 3, no signal
    ex = exits[0]
    assert ex["process"]["exec_id"] == proc["exec_id"]
    assert ex["status"] == 3 and "signal" not in ex
    assert ex["parent"]["exec_id"] == parent["exec_id"]


def test_exec_id_is_tetragon_format(daemon):
    import base64
    mark = marker()
    subprocess.run(["/bin/true", mark], check=True)
    (ev,) = daemon.wait_for(lambda evs: execs_with(evs, mark))
    node, ktime, pid = base64.b64decode(ev["process"]["exec_id"]).decode().rsplit(":", 2)
    assert node == os.uname().nodename
    assert int(pid) == ev["process"]["pid"]
    assert int(ktime) > 0
    assert ev["process"]["start_time"].endswith("Z")
    wrapped = [e for e in daemon.events() if e.get("process_exec", {}).get("process", {}).get("exec_id") == ev["process"]["exec_id"]]
    assert wrapped[0]["node_name"] == node
    assert wrapped[0]["time"] == ev["process"]["start_time"]


def test_signal_is_reported(daemon):
    mark = marker()
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 30; true", mark])
    daemon.wait_for(lambda evs: execs_with(evs, mark))
    p.send_signal(signal.SIGKILL)
    p.wait()
    (ex,) = daemon.wait_for(lambda evs: exits_of(evs, p.pid))
    assert ex["signal"] == "SIGKILL"
    assert "status" not in ex
    assert ex["process"]["binary"] == "/bin/sh"


def test_fork_without_exec(daemon):
    mark = marker()
    code = "import os,sys\npid=os.fork()\nif pid==0: os._exit(7)\nprint(pid); os.waitpid(pid,0)"
    out = subprocess.run(["/usr/bin/python3", "-c", code, mark], capture_output=True, text=True, check=True)
    child = int(out.stdout)
    execs = daemon.wait_for(lambda evs: execs_with(evs, mark))
    (ex,) = daemon.wait_for(lambda evs: exits_of(evs, child))
    assert ex["status"] == 7
    assert "clone" in ex["process"]["flags"]
    assert ex["process"]["binary"] == "/usr/bin/python3"
    # its parent is the python process that forked it
    assert ex["parent"]["exec_id"] == execs[0]["process"]["exec_id"]
    # a fork is not an exec: no process_exec for the child
    assert not [e for e in of_type(daemon.events(), "process_exec") if e["process"]["pid"] == child]


def test_long_argv_is_truncated(daemon):
    mark = marker()
    subprocess.run(["/bin/true", mark] + ["x" * 1000] * 10, check=True)
    (ev,) = daemon.wait_for(lambda evs: execs_with(evs, mark))
    assert "truncArgs" in ev["process"]["flags"]
    assert len(ev["process"]["arguments"]) < 4096


def test_process_running_before_start_has_procfs(start_daemon, tmp_path):
    mark = marker()
    trigger = tmp_path / "go"
    script = f'while [ ! -e {trigger} ]; do sleep 0.05; done; exec /bin/true {mark}-child'
    early = subprocess.Popen(["/bin/sh", "-c", script, mark])
    try:
        d = start_daemon()
        trigger.touch()
        early.wait(10)
        (ev,) = d.wait_for(lambda evs: execs_with(evs, f"{mark}-child"))
        # exec replaced the shell: same pid, and its parent is this test, from /proc
        assert ev["process"]["pid"] == early.pid
        assert "procFS" in ev["parent"]["flags"]
        (ex,) = d.wait_for(lambda evs: exits_of(evs, early.pid))
        assert ex["process"]["exec_id"] == ev["process"]["exec_id"]
    finally:
        early.kill()


def test_procfs_process_exit(start_daemon):
    mark = marker()
    early = subprocess.Popen(["/bin/sh", "-c", "sleep 60; true", mark])
    time.sleep(0.1)
    d = start_daemon()
    early.kill()
    early.wait()
    (ex,) = d.wait_for(lambda evs: exits_of(evs, early.pid))
    assert "procFS" in ex["process"]["flags"]
    assert ex["process"]["arguments"] == f'-c "sleep 60; true" {mark}'
    assert ex["process"]["binary"] == os.path.realpath("/bin/sh")   # /proc/PID/exe is resolved
    assert ex["signal"] == "SIGKILL"


def test_binary_name_with_newline_and_relative_path(daemon, tmp_path):
    odd = tmp_path / "we\nird bin"
    odd.write_text("#!/bin/sh\nexit 0\n")
    odd.chmod(0o755)
    os.chmod(tmp_path, 0o755)
    mark = marker()
    subprocess.run(["./we\nird bin", mark], cwd=tmp_path, check=True)
    (ev,) = daemon.wait_for(lambda evs: execs_with(evs, mark))
    assert ev["process"]["binary"] == str(odd)
