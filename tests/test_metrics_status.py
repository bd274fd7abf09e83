"""Prometheus metrics scraped over HTTP after a known workload, and
`tetrad status` against the live daemon."""

import json
import re
import socket
import subprocess
import time
import urllib.request

from conftest import of_type, tetrad_cmd
from userside import marker_binary, status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_after_a_known_workload(start_daemon, tmp_path):
    port = free_port()
    marker = marker_binary(tmp_path)
    allow = json.dumps({"binary_regex": [re.escape(marker.name)]})
    d = start_daemon(f"--metrics-server=127.0.0.1:{port}", f"--export-allowlist={allow}",
                     "--export-rate-limit=10")
    before = scrape(port)
    n = 25
    for i in range(n):
        subprocess.run([str(marker), f"m{i}"])
    subprocess.run(["/bin/true"])   # not on the allow list: filtered out of the export
    d.wait_for(lambda evs: len(of_type(evs, "process_exit")) >= 5, what="exports")
    time.sleep(1.5)
    after = scrape(port)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)
    # every event reaches the counters, whatever the export keeps; others may run too
    assert delta('tetrad_events_total{type="PROCESS_EXEC"}') >= n
    assert delta('tetrad_events_total{type="PROCESS_EXIT"}') >= n
    # the export kept 10 (the burst) and the rate limit dropped exactly the rest of ours
    exported = [e for e in of_type(d.events(), "process_exec") + of_type(d.events(), "process_exit")]
    assert after["tetrad_export_ratelimit_events_dropped_total"] == 2 * n - len(exported)
    assert after["tetrad_export_ratelimit_events_dropped_total"] == status(d)["export"]["rate_limit_dropped"]
    assert after["tetrad_export_filtered_events_total"] > 0
    assert after["tetrad_events_exported_total"] == len(exported)
    assert after["tetrad_events_exported_bytes_total"] == d.export.stat().st_size
    assert after["tetrad_process_cache_size"] > 0
    assert after["tetrad_process_cache_capacity"] == 65536
    lost = status(d)["lost_in_kernel"]
    for kind in ("exec", "exit", "clone"):
        assert after[f'tetrad_observer_ringbuf_events_lost_total{{type="{kind}"}}'] == lost.get(kind, 0)
    assert delta('tetrad_handling_latency_count{op="exec"}') >= n
    assert after['tetrad_handling_latency_bucket{le="+Inf",op="exec"}'] == after['tetrad_handling_latency_count{op="exec"}']
    assert after["process_resident_memory_bytes"] > 10e6
    assert after["process_cpu_seconds_total"] > 0
    assert 'tetrad_tracingpolicy_loaded{state="enabled"}' in after


def test_metrics_server_bad_address(start_daemon):
    d = start_daemon("--metrics-server=nonsense", ready=False)
    assert d.proc.wait(60) != 0
    assert "--metrics-server nonsense: expected [host]:port" in d.log_text()


def test_status_command(daemon, tmp_path):
    marker = marker_binary(tmp_path)
    subprocess.run([str(marker)])
    time.sleep(2.2)
    r = subprocess.run(tetrad_cmd() + ["status", f"--server-address=unix://{daemon.sock}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert re.search(r"^tetrad \S+, pid \d+, up \d+s", text, re.M)
    assert "hook for process events: raw tracepoints" in text
    assert "lacks" in text and "kprobes" in text
    assert re.search(r"events total: .*process_exec \d+", text)
    assert re.search(r"events/s \(last \d+s\): .*process_exec [\d.]+", text)
    assert "lost in kernel:" in text and "process cache:" in text and "containerd:" in text
    j = json.loads(subprocess.run(tetrad_cmd() + ["status", "-o", "json", f"--server-address=unix://{daemon.sock}"],
                                  capture_output=True, text=True, timeout=30).stdout)
    assert j["pid"] == daemon.proc.pid
    assert j["features"]["raw_tracepoints"] is True
    assert j["events"]["process_exec"] >= 1
    assert j["api"]["socket"] == str(daemon.sock)
