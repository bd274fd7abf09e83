"""The Debian package under a real systemd: a bookworm tree booted with
`systemd-nspawn -b` (our machines do not run systemd as PID 1).

The tree is built once by tests/system/bookworm-tree.sh and cached outside
the checkout; each run boots a throw-away overlay of it.  Everything is
driven the way an administrator would: apt-get install, systemctl,
journalctl, kill, apt-get purge.  The tests of this module run in order on
one booted machine.

PIDs: BPF reports host PIDs while the container's /proc is its own, so the
host's /proc is bound at /run/host-proc and the daemon pointed at it with
the /etc/tetrad/tetrad.conf.d/procfs drop-in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, bpf_prog_ids, bpf_prog_ids_of

HOST_PROC = "/run/host-proc"


def run(cmd, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


class Machine:
    """A booted systemd-nspawn container on an overlay of the cached tree."""

    def __init__(self, workdir: Path, tree: str):
        self.workdir = workdir
        self.root = workdir / "root"
        for d in ("upper", "work", "root"):
            (workdir / d).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={tree},upperdir={workdir}/upper,workdir={workdir}/work",
                        str(self.root)], check=True)
        (self.root / HOST_PROC.lstrip("/")).mkdir(parents=True, exist_ok=True)
        dropins = self.root / "etc/tetrad/tetrad.conf.d"
        dropins.mkdir(parents=True)
        (dropins / "procfs").write_text(HOST_PROC + "\n")
        self.name = f"tetrad-test-{os.getpid()}"
        self.console = open(workdir / "console.log", "w")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "-b", "-M", self.name,
             "--register=no", "--keep-unit", "--console=pipe", "--capability=all",
             # without it seccomp refuses bpf() in units: EPERM
             "--system-call-filter=bpf perf_event_open",
             "--bind=/sys/kernel/tracing", "--bind-ro=/sys/kernel/btf",
             "--bind-ro=/lib/modules", "--bind-ro=/usr/src", f"--bind-ro=/proc:{HOST_PROC}"],
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT)
        self.leader = self._wait_for_leader()
        self._wait_booted()

    def _wait_for_leader(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited: {self.console_text()}")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
            pids = children.read_text().split()
            if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                return int(pids[0])
            time.sleep(0.05)
        raise AssertionError(f"container init did not start: {self.console_text()}")

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)
        raise AssertionError(f"boot did not finish ({state}): {self.console_text()}")

    def console_text(self) -> str:
        self.console.flush()
        return (self.workdir / "console.log").read_text()[-3000:]

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """A shell command inside the container (all its namespaces)."""
        r = run(["nsenter", "-t", str(self.leader), "-a", "/bin/sh", "-c", script], timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{script!r} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def main_pid_or_0(self) -> int:
        return int(self.sh("systemctl show -P MainPID tetrad").stdout)

    def main_pid(self) -> int:
        pid = self.main_pid_or_0()
        # 0 (not running) must never reach `kill`: `kill -9 0` would hit our own process group
        assert pid > 0, "tetrad.service has no main process:\n" + self.sh(
            "systemctl status tetrad --no-pager; journalctl -u tetrad --no-pager -n 40", check=False).stdout
        return pid

    def host_pid(self, pid: int) -> int:
        """The host's pid of a process of this container."""
        pidns = os.stat(f"/proc/{self.leader}/ns/pid").st_ino
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino != pidns:
                    continue
                with open(f"/proc/{entry}/status") as f:
                    nspid = next(line for line in f if line.startswith("NSpid:")).split()
            except (OSError, StopIteration):
                continue
            if int(nspid[-1]) == pid:
                return int(entry)
        raise AssertionError(f"no host process for container pid {pid}")

    def wait_active(self, timeout: float = 120, other_than: int = 0) -> int:
        """Wait for tetrad.service to be active (with a main pid other than
        `other_than`); returns its main pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-active tetrad", check=False).stdout.strip()
            if state == "active":
                pid = self.main_pid_or_0()   # 0 while systemd is still reaping a killed one
                if pid and pid != other_than:
                    return pid
            time.sleep(0.2)
        raise AssertionError("tetrad.service not active:\n" + self.sh(
            "systemctl status --no-pager tetrad; journalctl -u tetrad --no-pager -n 40",
            check=False).stdout)

    def journal_events(self, marker: str, binary: str) -> list[dict]:
        """process_exec entries of `binary` whose MESSAGE holds `marker`;
        --all, or journalctl shows fields over 4 KiB (TETRAD_EVENT) as null."""
        out = self.sh("journalctl -u tetrad -o json --all --no-pager "
                      f"TETRAD_EVENT_TYPE=process_exec TETRAD_BINARY={binary}").stdout
        return [e for e in map(json.loads, out.splitlines()) if marker in e.get("MESSAGE", "")]

    def close(self) -> None:
        if self.nspawn.poll() is None:
            self.sh("systemctl poweroff", check=False, timeout=30)
            try:
                self.nspawn.wait(30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        self.console.close()
        subprocess.run(["umount", str(self.root)], check=False)


@pytest.fixture(scope="module")
def deb() -> Path:
    r = run(["sh", str(REPO / "scripts/build-deb.sh")], cwd=REPO)
    assert r.returncode == 0, f"make deb failed:\n{r.stdout}\n{r.stderr}"
    return REPO / r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def machine(deb, tmp_path_factory):
    from tetrad import kheaders
    kheaders.ensure()   # /lib/modules/<release>/build, bound read-only into the container
    r = run(["sh", str(REPO / "tests/system/bookworm-tree.sh")], timeout=900)
    assert r.returncode == 0, f"building the bookworm tree failed:\n{r.stderr}"
    m = Machine(tmp_path_factory.mktemp("nspawn"), r.stdout.strip())
    shutil.copy(deb, m.root / "root" / deb.name)
    yield m
    m.close()


def test_install_starts_and_enables_the_service(machine, deb):
    machine.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/{deb.name}")
    machine.wait_active()
    assert machine.sh("systemctl is-enabled tetrad").stdout.strip() == "enabled"
    status = machine.sh("systemctl show -P StatusText tetrad").stdout
    assert "events/s" in status, status      # STATUS= from sd_notify
    # conffiles and the files the package promises
    conffiles = machine.sh("dpkg-query --control-show tetrad conffiles").stdout.split()
    assert "/etc/tetrad/tetrad.yaml" in conffiles
    for path in ("/usr/bin/tetrad", "/usr/share/man/man8/tetrad.8.gz",
                 "/usr/share/tetrad/bpf/process.c", "/etc/tetrad/policies"):
        machine.sh(f"test -e {path}")
    # whatever policies and examples the checkout ships
    for policy in REPO.glob("etc/tetrad/policies/*.y*ml"):
        assert f"/etc/tetrad/policies/{policy.name}" in conffiles
    for example in (REPO / "etc/tetrad/examples").glob("*"):
        machine.sh(f"test -e /usr/share/doc/tetrad/examples/{example.name} -o "
                   f"-e /usr/share/doc/tetrad/examples/{example.name}.gz")


def test_unit_verifies_clean(machine):
    # --man=no: the minimal tree has no man-db to resolve Documentation=man:
    r = machine.sh("systemd-analyze verify --man=no /lib/systemd/system/tetrad.service")
    assert r.stderr == "", r.stderr


def test_exec_in_journal_with_fields_and_in_the_file(machine):
    marker = f"nspawn{time.time_ns()}"
    machine.sh(f"/bin/echo {marker} >/dev/null")
    deadline = time.monotonic() + 60
    entries = []
    while not entries and time.monotonic() < deadline:
        entries = machine.journal_events(marker, "/bin/echo")
        time.sleep(0.3)
    assert entries, "no process_exec in journalctl -u tetrad -o json"
    e = entries[0]
    assert e["SYSLOG_IDENTIFIER"] == "tetrad" and e["PRIORITY"] == "6"
    assert e["_TRANSPORT"] == "journal" and e["_SYSTEMD_UNIT"] == "tetrad.service"
    assert e["TETRAD_BINARY"] == "/bin/echo"
    event = json.loads(e["TETRAD_EVENT"])["process_exec"]["process"]
    assert e["TETRAD_EXEC_ID"] == event["exec_id"] and e["TETRAD_PID"] == str(event["pid"])
    assert marker in event["arguments"]
    # the same event in the rotating file
    lines = machine.sh(f"cat /var/log/tetrad/tetrad*.log | grep -F {marker}", check=False).stdout
    execs = [json.loads(line) for line in lines.splitlines()]
    assert any(x.get("process_exec", {}).get("process", {}).get("exec_id") == event["exec_id"]
               for x in execs)
    # the daemon's own log lines are there too, told apart by their transport
    logs = machine.sh("journalctl -u tetrad -o json --no-pager _TRANSPORT=stdout").stdout
    assert any("self-test passed" in json.loads(line)["MESSAGE"] for line in logs.splitlines())


DROPPED_POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: nspawn-chdir
spec:
  kprobes:
  - call: sys_chdir
    syscall: true
    args:
    - index: 0
      type: string
    selectors:
    - matchArgs:
      - index: 0
        operator: Prefix
        values: ["/nspawn-policy-"]
"""


def test_dropped_policy_takes_effect_without_restart(machine):
    pid = machine.main_pid()
    machine.sh(f"cat > /etc/tetrad/policies/chdir.yaml <<'EOF'\n{DROPPED_POLICY}EOF")
    marker = f"/nspawn-policy-{time.time_ns()}"
    deadline = time.monotonic() + 60
    entries = []
    while not entries and time.monotonic() < deadline:
        machine.sh(f"cd {marker} 2>/dev/null; true", check=False)   # loading takes a moment
        out = machine.sh("journalctl -u tetrad -o json --all --no-pager "
                         "TETRAD_EVENT_TYPE=process_kprobe TETRAD_POLICY=nspawn-chdir").stdout
        entries = [e for e in map(json.loads, out.splitlines()) if marker in e.get("TETRAD_EVENT", "")]
        time.sleep(0.5)
    assert entries, "the dropped policy produced no event"
    event = json.loads(entries[0]["TETRAD_EVENT"])["process_kprobe"]
    assert event["function_name"] == "sys_chdir" and event["args"][0]["string_arg"] == marker
    assert machine.main_pid() == pid   # no restart
    machine.sh("rm /etc/tetrad/policies/chdir.yaml")


def test_reload(machine):
    # a reload goes through the daemon (RELOADING=1 ... READY=1) without a restart
    pid = machine.main_pid()
    machine.sh("systemctl reload tetrad")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log = machine.sh("journalctl -u tetrad --no-pager -o cat _TRANSPORT=stdout").stdout
        if "reloaded" in log:
            break
        time.sleep(0.2)
    assert "reloaded" in log
    assert machine.wait_active() == pid


def test_kill_9_is_restarted(machine):
    pid = machine.main_pid()
    machine.sh(f"kill -9 {pid}")
    new = machine.wait_active(other_than=pid)
    assert new != pid


def test_stalled_loop_is_restarted_by_the_watchdog(machine):
    # A short watchdog for the test; SIGSTOP stands for a stalled event loop,
    # TimeoutAbortSec= bounds how long systemd waits on its SIGABRT.
    machine.sh("mkdir -p /etc/systemd/system/tetrad.service.d && printf "
               "'[Service]\\nWatchdogSec=2s\\nTimeoutAbortSec=2s\\n' "
               ">/etc/systemd/system/tetrad.service.d/watchdog.conf && "
               "systemctl daemon-reload && systemctl reset-failed tetrad && systemctl restart tetrad")
    pid = machine.wait_active()
    time.sleep(3)   # pings keep it alive
    assert machine.main_pid() == pid
    machine.sh(f"kill -STOP {pid}")
    new = machine.wait_active(other_than=pid, timeout=30)
    assert new != pid
    log = machine.sh("journalctl -u tetrad --no-pager -o cat _PID=1").stdout
    assert "Watchdog timeout" in log, log[-2000:]


def journal_exporter_stats(machine) -> dict:
    status = json.loads(machine.sh("cat /run/tetrad/status.json").stdout)
    return next(e for e in status["exporters"]["exporters"]
                if e["path"] == "/run/systemd/journal/socket")


def wait_for_journal_entry(machine, marker: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = machine.journal_events(marker, "/bin/echo")
        if entries:
            return entries
        time.sleep(0.3)
    return []


def test_without_journald_the_file_goes_on_and_nothing_is_lost_silently(machine):
    machine.wait_active()
    try:
        check_journald_outage(machine)
    finally:
        # Stopping journald (rather than restarting it) closed the service's
        # stdout stream for good: start the service afresh for the next tests.
        machine.sh("systemctl reset-failed tetrad; systemctl restart tetrad")


def check_journald_outage(machine):
    machine.sh("systemctl stop systemd-journald.socket systemd-journald-dev-log.socket "
               "systemd-journald-audit.socket systemd-journald.service")
    during = f"nojournald{time.time_ns()}"
    try:
        machine.sh(f"/bin/echo {during} >/dev/null")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            in_file = machine.sh(f"grep -c -F {during} /var/log/tetrad/tetrad.log",
                                 check=False).stdout.strip()
            if in_file not in ("", "0"):
                break
            time.sleep(0.3)
        assert in_file not in ("", "0"), "the file export stopped with journald"
        time.sleep(1.5)   # status.json is rewritten every second
        stats = journal_exporter_stats(machine)
        # entries wait for journald (bounded) or are counted as lost
        assert stats["backlog"] > 0 or stats["lines_lost"] > 0, stats
    finally:
        machine.sh("systemctl start systemd-journald.socket systemd-journald-dev-log.socket "
                   "systemd-journald.service")
    # journald is back: the exporter reconnects and catches up with what waited
    deadline = time.monotonic() + 60
    while journal_exporter_stats(machine)["backlog"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert journal_exporter_stats(machine)["backlog"] == 0, "the backlog never drained"
    after = f"journaldback{time.time_ns()}"
    machine.sh(f"/bin/echo {after} >/dev/null")
    assert wait_for_journal_entry(machine, after), (
        "no journal entries after journald came back:\n"
        + machine.sh("systemctl status --no-pager tetrad", check=False).stdout)
    # what happened during the outage reached the journal late, or was counted
    # (the backlog is bounded: other tests on this machine may have filled it)
    assert wait_for_journal_entry(machine, during, timeout=1) or \
        journal_exporter_stats(machine)["lines_lost"] > 0


def test_stop_leaves_no_bpf_program(machine):
    pid = machine.wait_active()
    ours = bpf_prog_ids_of(machine.host_pid(pid))
    assert ours and ours <= bpf_prog_ids()
    machine.sh("systemctl stop tetrad")
    assert machine.sh("systemctl is-active tetrad", check=False).stdout.strip() == "inactive"
    deadline = time.monotonic() + 5     # the kernel frees programs asynchronously
    while ours & bpf_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ours & bpf_prog_ids()


def test_purge_removes_everything(machine):
    owned = machine.sh("dpkg -L tetrad").stdout.split()
    # the test's own drop-in is the administrator's file: dpkg leaves it alone
    machine.sh("rm /etc/tetrad/tetrad.conf.d/procfs")
    machine.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tetrad")
    assert machine.sh("dpkg-query -W -f '${Status}' tetrad", check=False).stdout.strip() in (
        "", "unknown ok not-installed")
    shared = {"/.", "/etc", "/lib", "/lib/systemd", "/lib/systemd/system", "/usr", "/usr/bin",
              "/usr/lib", "/usr/lib/python3", "/usr/lib/python3/dist-packages", "/usr/share",
              "/usr/share/doc", "/usr/share/man", "/usr/share/man/man8"}
    left = machine.sh("for f in " + " ".join(p for p in owned if p not in shared)
                      + "; do test -e $f && echo $f; done; true").stdout.split()
    assert left == []
    for path in ("/etc/tetrad", "/var/log/tetrad",
                 "/etc/systemd/system/multi-user.target.wants/tetrad.service"):
        assert machine.sh(f"test -e {path}", check=False).returncode != 0, path
