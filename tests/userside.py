"""Helpers for the user-side tests: getevents subprocesses read line by line,
marker binaries, the daemon's status over its socket."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

from conftest import tetrad_cmd

from tetrad.api import client


class Lines:
    """A subprocess whose stdout lines are collected by a thread."""

    def __init__(self, args, stdin=subprocess.DEVNULL, env=None):
        self.proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, encoding="utf-8", env=env)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, predicate, timeout=10.0, what="lines"):
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if predicate(line)]
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {len(self.lines)} lines, "
                                     f"stderr: {self.stderr_now()}")
            try:
                line = self._q.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if line is None:
                if not [x for x in self.lines if predicate(x)]:
                    raise AssertionError(f"stream ended before {what}; stderr: {self.stderr_now()}")
            else:
                self.lines.append(line)

    def drain(self, quiet_s=0.5):
        """Collect what arrives until nothing came for quiet_s."""
        while True:
            try:
                line = self._q.get(timeout=quiet_s)
            except queue.Empty:
                return self.lines
            if line is None:
                return self.lines
            self.lines.append(line)

    def stderr_now(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def getevents(daemon, *args, **kw) -> Lines:
    return Lines(tetrad_cmd() + ["getevents", f"--server-address=unix://{daemon.sock}", *args], **kw)


def status(daemon) -> dict:
    return client.call(f"unix://{daemon.sock}", "status")


def subscriptions(daemon) -> int:
    """How many getevents streams the daemon has started since it began."""
    return status(daemon)["api"]["subscriptions_total"]


def wait_subscribers(daemon, n: int, since: int = 0, timeout=10.0) -> None:
    """Wait until n more getevents clients than `since` have subscribed."""
    deadline = time.monotonic() + timeout
    while subscriptions(daemon) < since + n:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} getevents clients subscribed")
        time.sleep(0.05)


def marker_binary(directory: Path, source="/bin/true") -> Path:
    """A copy of `source` under a unique name, so its events are ours alone."""
    path = Path(directory) / f"tetrad-mark-{uuid.uuid4().hex[:10]}"
    shutil.copy(source, path)
    os.chmod(path, 0o755)
    return path
