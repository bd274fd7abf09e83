"""Journal export: the native protocol over a real datagram socket (we play
journald's side and parse what arrives), and the real daemon sending to it.
Under a real journald this is exercised by tests/test_system_nspawn.py."""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import subprocess
import time

import pytest

from conftest import Daemon, execs_with, tetrad_cmd
from tetrad.encoder.compact import CompactEncoder
from tetrad.journal import JournalExporter, encode_entry, journal_fields


def parse_entry(data: bytes) -> dict[str, str]:
    """journald's reading of the native format (JOURNAL_NATIVE_PROTOCOL)."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = nl + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        fields[name.decode()] = value.decode()
    return fields


class FakeJournald:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def receive(self) -> list[dict]:
        out = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 256 * 1024, 1)
            except BlockingIOError:
                return out
            if fds:   # a big entry comes as a sealed memfd
                with os.fdopen(fds[0], "rb") as f:
                    f.seek(0)   # journald maps it from the start
                    data = f.read()
            out.append(parse_entry(data))

    def receive_until(self, predicate, timeout=10.0) -> list[dict]:
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            got += self.receive()
            if predicate(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"journal entries not as expected: {got[-5:]}")


@pytest.fixture
def journald(tmp_path):
    j = FakeJournald(tmp_path / "journal.sock")
    yield j
    j.sock.close()


EXEC = {"process_exec": {"process": {
    "exec_id": "bm9kZToxMjM0OjU2Nzg=", "pid": 5678, "binary": "/usr/bin/curl",
    "arguments": "https://ebpf.io",
    "pod": {"namespace": "default", "name": "xwing", "container": {"id": "containerd://abc"}}}},
    "node_name": "node", "time": "2026-01-01T00:00:00Z"}
KILL = {"process_tracepoint": {"process": {"pid": 9, "binary": "/bin/cat"},
                               "policy_name": "block-cat", "action": "KPROBE_ACTION_SIGKILL"},
        "node_name": "node", "time": "2026-01-01T00:00:00Z"}


def test_entry_fields_and_priority(journald):
    exp = JournalExporter(socket_path=journald.path, render=lambda e: "RENDERED")
    exp.write(json.dumps(EXEC))
    exp.write(json.dumps(KILL))
    exec_entry, kill_entry = journald.receive()
    assert exec_entry == {
        "MESSAGE": "RENDERED", "PRIORITY": "6", "SYSLOG_IDENTIFIER": "tetrad",
        "TETRAD_EVENT_TYPE": "process_exec", "TETRAD_EXEC_ID": "bm9kZToxMjM0OjU2Nzg=",
        "TETRAD_PID": "5678", "TETRAD_BINARY": "/usr/bin/curl", "TETRAD_NAMESPACE": "default",
        "TETRAD_POD": "xwing", "TETRAD_CONTAINER_ID": "containerd://abc",
        "TETRAD_EVENT": json.dumps(EXEC)}
    assert kill_entry["PRIORITY"] == "4"       # enforcement is a warning
    assert kill_entry["TETRAD_POLICY"] == "block-cat"
    assert kill_entry["TETRAD_EVENT_TYPE"] == "process_tracepoint"
    assert exp.stats()["lines_written"] == 2 and exp.stats()["lines_lost"] == 0
    exp.close()


def test_newlines_and_big_entries_survive(journald):
    event = {"process_exec": {"process": {"binary": "/bin/sh", "arguments": "-c 'a\nb'"}}}
    big = {"process_exec": {"process": {"binary": "/bin/x", "arguments": "y" * 300_000}}}
    exp = JournalExporter(socket_path=journald.path,
                          render=lambda e: e["process_exec"]["process"]["arguments"])
    exp.write(json.dumps(event))
    exp.write(json.dumps(big))       # too big for a datagram: goes as a memfd
    small, large = journald.receive()
    assert small["MESSAGE"] == "-c 'a\nb'"
    assert json.loads(large["TETRAD_EVENT"]) == big
    assert exp.stats()["lines_lost"] == 0
    exp.close()


def test_absent_journald_counts_losses(tmp_path):
    exp = JournalExporter(socket_path=str(tmp_path / "nothing.sock"))
    for _ in range(5):
        exp.write(json.dumps(EXEC))
    exp.flush()
    stats = exp.stats()
    assert stats["lines_lost"] == 5 and stats["lines_written"] == 0
    # journald appears later (it restarted): the next flush reconnects
    j = FakeJournald(tmp_path / "nothing.sock")
    exp.flush()
    exp.write(json.dumps(EXEC))
    assert len(j.receive()) == 1
    exp.close()
    j.sock.close()


def test_busy_journald_backlog_then_loss(journald):
    line = json.dumps(EXEC)
    size = len(encode_entry(journal_fields(EXEC, line, CompactEncoder(color="never").encode(EXEC))))
    exp = JournalExporter(socket_path=journald.path, backlog_bytes=50 * size)
    n = 500   # far more than the socket queue (net.unix.max_dgram_qlen) holds
    for _ in range(n):
        exp.write(json.dumps(EXEC))
    stats = exp.stats()
    assert stats["backlog"] == 50 and stats["lines_lost"] > 0
    got = []
    while exp.stats()["backlog"]:
        got += journald.receive()
        exp.flush()
    got += journald.receive()
    stats = exp.stats()
    assert len(got) == stats["lines_written"]
    assert stats["lines_written"] + stats["lines_lost"] == n
    exp.close()


def test_journald_restart_is_followed(tmp_path):
    j = FakeJournald(tmp_path / "j.sock")
    exp = JournalExporter(socket_path=j.path)
    exp.write(json.dumps(EXEC))
    j.sock.close()
    os.unlink(j.path)
    j = FakeJournald(tmp_path / "j.sock")
    exp.write(json.dumps(EXEC))        # ECONNREFUSED on the old socket: reconnect
    assert len(j.receive()) == 1
    assert exp.stats()["lines_written"] == 2
    exp.close()
    j.sock.close()


def test_daemon_sends_events_and_keeps_the_file(tmp_path, journald):
    d = Daemon(tmp_path, env={"TETRAD_JOURNAL_SOCKET": journald.path})
    try:
        d.wait_ready()
        mark = "jrnl" + str(time.time_ns())
        subprocess.run(["/bin/echo", mark], check=True, stdout=subprocess.DEVNULL)
        entries = journald.receive_until(
            lambda got: any(mark in e.get("TETRAD_EVENT", "") for e in got))
        entry = next(e for e in entries if mark in e["TETRAD_EVENT"])
        assert entry["TETRAD_EVENT_TYPE"] == "process_exec"
        assert entry["TETRAD_BINARY"] == "/bin/echo"
        # MESSAGE is the line `tetrad getevents -o compact --color never` prints
        assert entry["MESSAGE"] == f"\U0001F680 process {os.uname().nodename} /bin/echo {mark}"
        event = json.loads(entry["TETRAD_EVENT"])
        assert entry["TETRAD_PID"] == str(event["process_exec"]["process"]["pid"])
        assert entry["TETRAD_EXEC_ID"] == event["process_exec"]["process"]["exec_id"]
        assert d.wait_for(lambda evs: execs_with(evs, mark))   # the file has it too
    finally:
        d.stop()


def test_daemon_without_journald_keeps_exporting_and_counts(tmp_path):
    d = Daemon(tmp_path, env={"TETRAD_JOURNAL_SOCKET": str(tmp_path / "absent.sock")})
    try:
        d.wait_ready()
        mark = "nojrnl" + str(time.time_ns())
        subprocess.run(["/bin/echo", mark], check=True, stdout=subprocess.DEVNULL)
        d.wait_for(lambda evs: execs_with(evs, mark))
        time.sleep(1.2)   # the status file is rewritten every second
        exporters = json.loads(d.status_file.read_text())["exporters"]["exporters"]
        journal = next(e for e in exporters if e["path"].endswith("absent.sock"))
        assert journal["lines_lost"] > 0 and journal["lines_written"] == 0
        assert "cannot write events to the journal" in d.log_text()
        probe = subprocess.run(tetrad_cmd() + ["probe", f"--server-address=unix://{d.sock}"],
                               capture_output=True, text=True, check=True).stdout
        assert f"export to {tmp_path}/absent.sock: 0 written, " in probe, probe
    finally:
        d.stop()


def test_journal_can_be_turned_off(tmp_path, journald):
    d = Daemon(tmp_path, ["--enable-journal=false"], env={"TETRAD_JOURNAL_SOCKET": journald.path})
    try:
        d.wait_ready()
        subprocess.run(["/bin/true"], check=True)
        time.sleep(0.5)
        assert journald.receive() == []
    finally:
        d.stop()


def test_encode_entry_binary_form():
    data = encode_entry([("A", "x"), ("B", "1\n2")])
    assert data == b"A=x\nB\n" + struct.pack("<Q", 3) + b"1\n2\n"
    assert journal_fields({}, "{}", "m") == [("MESSAGE", "m"), ("PRIORITY", "6"),
                                             ("SYSLOG_IDENTIFIER", "tetrad"),
                                             ("TETRAD_EVENT", "{}")]


def test_log_lines_carry_syslog_priority_on_the_journal_stream(tmp_path, monkeypatch):
    import logging

    from tetrad import logs
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.setup("info", "text", stream=stream)
        logging.getLogger("tetrad.test").warning("two\nlines")
        logging.getLogger("tetrad.test").info("fine")
        monkeypatch.setenv("JOURNAL_STREAM", "0:0")   # some other stream: timestamps again
        logs.setup("info", "text", stream=stream)
        logging.getLogger("tetrad.test").info("plain")
    lines = path.read_text().splitlines()
    assert lines[:3] == ["<4>WARNING tetrad.test: two", "<4>lines", "<6>INFO tetrad.test: fine"]
    assert lines[3].endswith("INFO tetrad.test: plain") and not lines[3].startswith("<")


def test_write_event_uses_the_daemons_dict_and_files_get_the_line(journald, tmp_path):
    from tetrad.exporter import MultiExporter, RotatingFileExporter
    files = RotatingFileExporter(str(tmp_path / "events.log"))
    multi = MultiExporter([files, JournalExporter(socket_path=journald.path)])
    line = json.dumps(EXEC)
    multi.write_event(EXEC, line)
    multi.close()
    (entry,) = journald.receive()
    assert entry["TETRAD_POD"] == "xwing" and entry["TETRAD_EVENT"] == line
    assert (tmp_path / "events.log").read_text() == line + "\n"


def test_event_type_is_the_key_besides_the_envelope():
    from tetrad.journal import event_type
    assert event_type(EXEC) == "process_exec"
    limited = {"node_name": "n", "time": "t", "rate_limit_info": {"number_of_dropped_process_events": 3}}
    assert event_type(limited) == "rate_limit_info"


def test_odd_events_still_make_an_entry(journald):
    exp = JournalExporter(socket_path=journald.path)
    for event in ({"process_exec": "not an object"}, {"process_kprobe": {"process": {"pid": 0}}},
                  {"process_exec": {"process": {"pid": 12, "binary": 5}}}):
        exp.write_event(event, json.dumps(event))
    entries = journald.receive()
    assert [e["TETRAD_EVENT_TYPE"] for e in entries] == ["process_exec", "process_kprobe",
                                                         "process_exec"]
    assert entries[2]["TETRAD_PID"] == "12" and entries[2]["TETRAD_BINARY"] == "5"
    assert "TETRAD_PID" not in entries[1]    # zero values are left out, as in the JSON
    exp.close()


def test_entries_wait_while_journald_restarts(tmp_path):
    j = FakeJournald(tmp_path / "j.sock")
    exp = JournalExporter(socket_path=j.path)
    exp.write(json.dumps(dict(EXEC, time="0")))
    j.sock.close()                     # journald stops; its socket file stays
    for n in range(1, 6):
        exp.write(json.dumps(dict(EXEC, time=str(n))))
        exp.flush()
    assert exp.stats()["backlog"] == 5 and exp.stats()["lines_lost"] == 0
    os.unlink(j.path)
    j = FakeJournald(tmp_path / "j.sock")  # journald is back
    exp.flush()
    exp.write(json.dumps(dict(EXEC, time="6")))
    times = [json.loads(e["TETRAD_EVENT"])["time"] for e in j.receive()]
    assert times == [str(n) for n in range(1, 7)]    # in order, none lost
    assert exp.stats()["lines_written"] == 7 and exp.stats()["lines_lost"] == 0
    exp.close()
    j.sock.close()
