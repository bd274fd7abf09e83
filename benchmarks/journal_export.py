"""Cost per event of the journal exporter (parse the line, render MESSAGE,
encode the native entry, send it) next to the rotating-file exporter.

The journal side sends to a real AF_UNIX datagram socket drained by a
child process, standing in for journald; journald's own speed is not
measured.  Prints microseconds per event, for the daemon's path (the event
dict at hand, write_event) and for a bare line (write, which parses it)."""

from __future__ import annotations

import json
import os
import socket
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tetrad.exporter import RotatingFileExporter  # noqa: E402
from tetrad.journal import JournalExporter  # noqa: E402

N = 50_000
PROCESS = {
    "exec_id": "dm06MTA5ODE2NzM4Mjk0NzozMjA5NQ==", "pid": 32095, "uid": 0, "cwd": "/root",
    "binary": "/usr/bin/curl", "arguments": "-s https://example.org/some/path?x=1",
    "flags": "execve clone", "start_time": "2026-11-27T05:30:02.648123456Z", "auid": 4294967295,
    "parent_exec_id": "dm06MTA5ODE2NzM4Mjk0NzozMjA5NA==", "tid": 32095,
    "process_credentials": {"uid": 0, "gid": 0, "euid": 0, "egid": 0, "suid": 0, "sgid": 0,
                            "fsuid": 0, "fsgid": 0},
    "ns": {k: {"inum": 4026531830 + i} for i, k in enumerate(
        ["uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children",
         "cgroup", "user"])},
}
LINE = json.dumps({"process_exec": {"process": PROCESS, "parent": dict(PROCESS, binary="/bin/bash")},
                   "node_name": "node", "time": "2026-11-27T05:30:02.648123456Z"},
                  separators=(",", ":"))


EVENT = json.loads(LINE)


def per_event_us(exporter, with_event: bool = False) -> float:
    t0 = time.perf_counter()
    for i in range(N):
        if with_event:
            exporter.write_event(EVENT, LINE)
        else:
            exporter.write(LINE)
        if i % 1000 == 0:
            exporter.flush()
    exporter.flush()
    return (time.perf_counter() - t0) / N * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "journal.sock")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(path)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        child = os.fork()
        if child == 0:   # the stand-in journald
            while True:
                receiver.recv(256 * 1024)
        receiver.close()
        results = []
        for with_event in (True, False):
            journal = JournalExporter(socket_path=path)
            results.append((per_event_us(journal, with_event), journal.stats()))
            journal.close()
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        files = RotatingFileExporter(os.path.join(tmp, "events.log"), max_size_mb=100)
        f_us = per_event_us(files)
        files.close()
    print(f"event line: {len(LINE)} bytes, {N} events")
    for name, (us, stats) in zip(("write_event(event, line)", "write(line)"), results):
        print(f"journal exporter, {name}: {us:.1f} us/event "
              f"({stats['lines_written']} sent, {stats['lines_lost']} lost, "
              f"{stats['bytes_written'] // max(stats['lines_written'], 1)} bytes/entry)")
    print(f"file exporter:    {f_us:.1f} us/event")


if __name__ == "__main__":
    main()
