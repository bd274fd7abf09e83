"""Start, self-test, rotation and stop of the real daemon."""

from __future__ import annotations

import signal
import subprocess
import time

from conftest import TIMEOUT_SCALE, Daemon, bpf_prog_ids, bpf_prog_ids_of, execs_with, of_type, tetrad_cmd


def test_stop_detaches_everything_quickly(tmp_path):
    d = Daemon(tmp_path)
    d.wait_ready()
    # the daemon's own programs (other tetrads may run on this machine)
    ours = bpf_prog_ids_of(d.proc.pid)
    assert ours and ours <= bpf_prog_ids(), "the daemon loaded no BPF program"
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(5) == 0
    assert time.monotonic() - t0 < 2.0 * TIMEOUT_SCALE
    d.log.close()
    deadline = time.monotonic() + 2   # the kernel frees detached programs asynchronously
    while ours & bpf_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours & bpf_prog_ids()
    assert "stopped" in d.log_text()


def test_sigint_stops_too(tmp_path):
    d = Daemon(tmp_path)
    d.wait_ready()
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(5) == 0


def test_startup_logs_features_and_selftest(daemon):
    text = daemon.log_text()
    assert "self-test passed" in text
    assert "kernel:" in text
    assert "ready in" in text


def test_rotation_under_load_keeps_every_event_once(start_daemon):
    d = start_daemon("--export-file-max-size-mb=1", "--export-file-max-backups=50",
                     "--export-file-compress")
    mark = "rot" + str(time.time_ns())
    n = 1500
    # one shell forks n /bin/true: each gives an exec (with parent) and an exit
    subprocess.run(["/bin/sh", "-c", f'i=0; while [ $i -lt {n} ]; do /bin/true {mark} $i; i=$((i+1)); done'],
                   check=True)
    def trues(evs):
        return [e for e in execs_with(evs, mark) if e["process"]["binary"] == "/bin/true"]

    evs = d.wait_for(lambda evs: len(trues(evs)) >= n and evs, timeout=60)
    files = d.export_files()
    assert len(files) > 2, f"expected several rotations, got {files}"
    seen = [e["process"]["arguments"] for e in trues(evs)]
    assert sorted(seen) == sorted(f"{mark} {i}" for i in range(n))   # each exactly once
    exec_ids = [e["process_exec"]["process"]["exec_id"] for e in evs if "process_exec" in e]
    assert len(exec_ids) == len(set(exec_ids))
    assert d.stop() == 0
    status = {e["process"]["pid"] for e in of_type(d.events(), "process_exit")}
    pids = {e["process"]["pid"] for e in trues(evs)}
    assert pids <= status


def test_bad_config_value_is_a_clear_error(tmp_path):
    d = Daemon(tmp_path, ["--export-file-max-size-mb=ten"])
    assert d.proc.wait(10 * TIMEOUT_SCALE) == 2
    d.log.close()
    assert "export-file-max-size-mb" in d.log_text() and "ten" in d.log_text()


def test_records_lost_in_the_kernel_are_counted_and_reported(start_daemon):
    # one page of ring buffer, and a consumer that is stopped: the kernel must
    # drop records, and the daemon must say so rather than lose them silently
    d = start_daemon("--rb-size=4096")
    d.proc.send_signal(signal.SIGSTOP)
    try:
        subprocess.run(["/bin/sh", "-c", "for i in $(seq 300); do /bin/true; done"], check=True)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 10 * TIMEOUT_SCALE
    while "kernel dropped" not in d.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "kernel dropped" in d.log_text()
    import json
    time.sleep(1.2)   # status is refreshed every second
    lost = json.loads(d.status_file.read_text())["lost_in_kernel"]
    assert lost.get("exec", 0) + lost.get("exit", 0) + lost.get("clone", 0) > 0
    probe = subprocess.run(tetrad_cmd() + ["probe", "-o", "json", f"--server-address=unix://{d.sock}"],
                           capture_output=True, text=True, check=True)
    reported = json.loads(probe.stdout)["daemon"]["lost_in_kernel"]
    assert sum(reported.values()) >= sum(lost.values())


def test_json_logs(start_daemon):
    import json
    d = start_daemon("--log-format=json")
    lines = [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]
    assert any("self-test passed" in entry["msg"] for entry in lines)
    assert all({"time", "level", "logger", "msg"} <= set(entry) for entry in lines)
