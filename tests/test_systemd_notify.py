"""sd_notify from the real daemon: we play systemd's side of $NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from conftest import Daemon


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict]] = []
        self.cursor = 0   # messages before it were matched by wait_for already

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, timeout: float = 60.0) -> dict:
        """The next message holding `key`, in order of arrival."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.cursor, len(self.messages)):
                if key in self.messages[i][1]:
                    self.cursor = i + 1
                    return self.messages[i][1]
            if time.monotonic() > deadline:
                break
            self.collect(0.2)
        raise AssertionError(f"no {key} within {timeout}s; got {self.messages}")

    def with_key(self, key: str) -> list[tuple[float, dict]]:
        return [(t, f) for t, f in self.messages if key in f]


@pytest.fixture
def notify(tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.sock.close()


def test_ready_watchdog_reload_stop(tmp_path, notify):
    d = Daemon(tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                              "WATCHDOG_USEC": "1000000"})
    try:
        ready = notify.wait_for("READY")
        # READY=1 comes after the probes are attached and /proc is read
        assert "ready in" in d.log_text()
        assert "events/s" in ready["STATUS"] and "lost 0 in kernel" in ready["STATUS"]

        # the event loop pings every WATCHDOG_USEC/2
        notify.collect(2.0)
        pings = [t for t, _ in notify.with_key("WATCHDOG")]
        assert len(pings) >= 3, notify.messages
        assert all(b - a < 0.8 for a, b in zip(pings, pings[1:])), pings

        d.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", timeout=5)
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert notify.wait_for("READY", timeout=5)["READY"] == "1"
        assert d.proc.poll() is None, "SIGHUP must not stop the daemon"
        assert "reloaded" in d.log_text()

        d.proc.send_signal(signal.SIGTERM)
        assert notify.wait_for("STOPPING", timeout=5)["STOPPING"] == "1"
        assert d.proc.wait(5) == 0
    finally:
        d.stop()


def test_a_stalled_loop_stops_pinging(tmp_path, notify):
    d = Daemon(tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                              "WATCHDOG_USEC": "400000"})
    try:
        notify.wait_for("READY")
        d.proc.send_signal(signal.SIGSTOP)
        notify.collect(0.5)       # what was in flight
        n = len(notify.with_key("WATCHDOG"))
        notify.collect(1.0)
        assert len(notify.with_key("WATCHDOG")) == n
        d.proc.send_signal(signal.SIGCONT)
        notify.collect(1.0)
        assert len(notify.with_key("WATCHDOG")) > n
    finally:
        d.stop()


def test_without_notify_socket_nothing_is_sent(daemon):
    # the ordinary fixture has no NOTIFY_SOCKET: the daemon runs as before
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reloaded" not in daemon.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reloaded" in daemon.log_text()
    assert daemon.stop() == 0


def test_status_line():
    from tetrad.systemd import status_line
    status = {"events": {"process_exec": 7, "process_exit": 5}, "lost_in_kernel": {"exec": 2},
              "exporters": {"exporters": [{"lines_lost": 3}, {"lines_lost": 1}]}}
    assert status_line(status, 12.4) == "12 events/s, 12 events, lost 2 in kernel, 4 in export"
    assert status_line(dict(status, policies=None), 0).startswith("0 events/s")
    assert status_line(dict(status, policies=[{}, {}]), 0).startswith("2 policies, 0 events/s")
