"""`tetrad getevents` reading Tetragon-format JSON lines from stdin (as from
`journalctl -o cat`, `kubectl logs`, a log file) and from --file."""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import tetrad_cmd

EVENTS = Path(__file__).parent / "data" / "tetragon_events.jsonl"
CURL = '/usr/bin/curl "-s https://deathstar.empire.svc/exhaust-port"'
LINES = {
    "exec_pod": f"\U0001F680 process default/xwing-5f7b {CURL}",
    "connect": "\U0001F50C connect default/xwing-5f7b /usr/bin/curl tcp 10.244.1.7:51234 -> 10.96.0.10:443",
    "exit_pod": f"\U0001F4A5 exit    default/xwing-5f7b {CURL} 0",
    "exec_host": "\U0001F680 process kind-worker /usr/bin/cat /etc/shadow",
    "read": "\U0001F4DA read    kind-worker /usr/bin/cat /etc/shadow",
    "exit_host": "\U0001F4A5 exit    kind-worker /usr/bin/cat /etc/shadow SIGKILL",
    "tracepoint": "\u2049\ufe0f tracepoint kind-worker /usr/bin/rm syscalls sys_enter_unlinkat",
    "ratelimit": "\U0001F6A6 ratelimit 17 events dropped",
}


def run(*args, stdin=None, file=None):
    with open(stdin or EVENTS, "rb") as f:
        r = subprocess.run(tetrad_cmd() + ["getevents", *args], stdin=f, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().splitlines(), r.stderr.decode()


STACK = ["Kernel:", "   0xffffffffbffffd68: tcp_connect+0x68"]


def test_compact_all_kinds_and_journal_noise():
    out, err = run("-o", "compact", "--stack-traces=false")
    assert out == list(LINES.values())
    assert "skipped 1 lines that are not JSON events" in err


def test_stack_traces_are_printed_by_default():
    out, _ = run("-o", "compact", "-e", "PROCESS_KPROBE")
    assert out == [LINES["connect"], *STACK, LINES["read"]]
    out, _ = run("-o", "compact", "-e", "PROCESS_KPROBE", "--stack-traces", "false")
    assert out == [LINES["connect"], LINES["read"]]


@pytest.mark.parametrize("flags,expected", [
    (["--namespace", "default"], ["exec_pod", "connect", "exit_pod"]),
    (["--host"], ["exec_host", "read", "exit_host", "tracepoint"]),
    (["--pod", "^xwing-"], ["exec_pod", "connect", "exit_pod"]),
    (["--containers", "space"], ["exec_pod", "connect", "exit_pod"]),
    (["--process", "cat$", "--process", "rm"], ["exec_host", "read", "exit_host", "tracepoint"]),
    (["--processes", "curl,rm"], ["exec_pod", "connect", "exit_pod", "tracepoint"]),
    (["--policy-names", "file-monitoring,connect"], ["connect", "read"]),
    (["--event-types", "PROCESS_TRACEPOINT", "-e", "RATE_LIMIT_INFO"], ["tracepoint", "ratelimit"]),
    (["--pids", "300"], ["exec_host", "read", "exit_host"]),
    (["--namespace-regex", "^def"], ["exec_pod", "connect", "exit_pod"]),
    (["--namespace", "default", "--event-types", "PROCESS_EXIT"], ["exit_pod"]),
])
def test_filters(flags, expected):
    out, _ = run("-o", "compact", "--stack-traces=false", *flags)
    assert out == [LINES[k] for k in expected]


def test_json_output_and_fields():
    out, _ = run("-e", "PROCESS_EXEC", "-f", "process.binary,process.pod.name")
    assert [json.loads(l) for l in out] == [
        {"process_exec": {"process": {"binary": "/usr/bin/curl", "pod": {"name": "xwing-5f7b"}}},
         "node_name": "kind-worker", "time": "2024-03-01T10:00:01.123456789Z"},
        {"process_exec": {"process": {"binary": "/usr/bin/cat"}},
         "node_name": "kind-worker", "time": "2024-03-01T10:00:03Z"}]
    out, _ = run("-e", "PROCESS_EXIT", "-F", "process,parent")
    assert [json.loads(l)["process_exit"] for l in out] == [
        {"status": 0, "time": "2024-03-01T10:00:02Z"}, {"signal": "SIGKILL", "time": "2024-03-01T10:00:04Z"}]
    out, _ = run("--pids", "300", "-e", "PROCESS_EXEC")
    assert json.loads(out[0]) == json.loads(EVENTS.read_text().splitlines()[4])


def test_timestamps_and_colour():
    out, _ = run("-o", "compact", "--timestamps", "-e", "PROCESS_KPROBE", "--stack-traces=false")
    assert out == ["2024-03-01T10:00:01.200000000Z " + LINES["connect"],
                   "2024-03-01T10:00:03.500000000Z " + LINES["read"]]
    out, _ = run("-o", "compact", "--color", "always", "--pids", "300", "-e", "PROCESS_KPROBE")
    assert out[0].startswith("\x1b[34m\U0001F4DA read   \x1b[0m \x1b[32mkind-worker\x1b[0m \x1b[35m/usr/bin/cat\x1b[0m ")
    out, _ = run("-o", "compact")            # auto: stdout is a pipe, no colour
    assert not any("\x1b" in l for l in out)


def test_file_source(tmp_path):
    out = subprocess.run(tetrad_cmd() + ["getevents", "-o", "compact", "--file", str(EVENTS), "--host"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == [LINES[k] for k in ("exec_host", "read", "exit_host", "tracepoint")]


def test_unrenderable_event_is_reported_and_skipped(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"process_exec":{}}\n' + EVENTS.read_text().splitlines()[0] + "\n")
    out, err = run("-o", "compact", stdin=bad)
    assert out == [LINES["exec_pod"]]
    assert "cannot render event (process field is not set)" in err


def test_broken_pipe_is_quiet():
    r = subprocess.run(" ".join(tetrad_cmd()) + f" getevents -o compact < {EVENTS} | head -1",
                       shell=True, capture_output=True, text=True, timeout=30)
    assert r.stdout.splitlines() == [LINES["exec_pod"]]
    assert "Traceback" not in r.stderr


def test_follows_a_live_pipe():
    """`tail -f log | tetrad getevents`: each event is printed as it arrives."""
    from userside import Lines
    first = EVENTS.read_text().splitlines()[0]
    ge = Lines(tetrad_cmd() + ["getevents", "-o", "compact"], stdin=subprocess.PIPE)
    try:
        ge.proc.stdin.write(first + "\n")
        ge.proc.stdin.flush()
        assert ge.wait_for(lambda l: True, timeout=10, what="first line while stdin is open") == [LINES["exec_pod"]]
        assert ge.proc.poll() is None
    finally:
        ge.proc.stdin.close()
        ge.stop()


def test_tty_encode_writes_the_terminal_data(tmp_path):
    import base64
    evs = [{"process_kprobe": {"process": {"binary": "/bin/bash"}, "function_name": "tty_write",
                               "args": [{"file_arg": {"path": "/dev/pts/3"}},
                                        {"bytes_arg": base64.b64encode(data).decode()}]}}
           for data in (b"ls -l\r\n", b"\x1b[1mbold\x1b[0m")]
    evs.insert(1, {"process_kprobe": {"process": {"binary": "/bin/bash"}, "function_name": "tty_write",
                                      "args": [{"file_arg": {"path": "/dev/pts/4"}}, {"bytes_arg": "eA=="}]}})
    f = tmp_path / "tty.jsonl"
    f.write_text("".join(json.dumps(e) + "\n" for e in evs) + EVENTS.read_text())
    with open(f, "rb") as stdin:
        r = subprocess.run(tetrad_cmd() + ["getevents", "-t", "/dev/pts/3"], stdin=stdin, capture_output=True)
    assert r.stdout == b"ls -l\r\n\x1b[1mbold\x1b[0m"


def test_invalid_utf8_and_c_locale(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"process_exec":{"process":{"binary":"/bin/\xff\xfe","arguments":"ok"}},"node_name":"n"}\n')
    with open(raw, "rb") as f:
        r = subprocess.run(tetrad_cmd() + ["getevents", "-o", "compact"], stdin=f, capture_output=True,
                           env={"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "\U0001F680 process n /bin/\ufffd\ufffd ok\n"
