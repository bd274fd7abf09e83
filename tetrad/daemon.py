"""`tetrad run`: the daemon.

Start-up, in order: detect what the kernel offers, resolve struct offsets
from BTF, compile and attach the process sensor, prove the offsets with the
self-test, learn the processes already running from /proc, then serve
events until SIGTERM/SIGINT.  Records that arrive while /proc is being read
are held and handled afterwards, so no process is missed in between.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

from . import config as config_mod
from . import features as features_mod
from . import offsets, selftest
from .btf import Btf, BtfError
from .events import EventBuilder
from .exporter import build_exporters
from .observer import Observer
from .poller import Poller
from .policy.manager import PolicyManager
from .process import procfs
from .process.cache import ProcessCache
from .process.model import NAMESPACE_NAMES
from .sensors.process import ProcessSensor, ring_pages
from .sensors.records import RECORD_SELFTEST
from .timefmt import KtimeClock

log = logging.getLogger("tetrad.daemon")

POLL_MS = 100
FLUSH_EVERY_S = 0.2
HOUSEKEEPING_EVERY_S = 1.0


class StartupError(Exception):
    pass


def host_namespaces(procfs_root: str) -> tuple:
    """Namespace inodes of PID 1, for `is_host`."""
    out = []
    for name in NAMESPACE_NAMES:
        try:
            out.append(os.stat(f"{procfs_root}/1/ns/{name}").st_ino)
        except OSError:
            out.append(0)
    return tuple(out)


def status_path(cfg) -> str:
    """The daemon's status file sits beside its socket (/run/tetrad)."""
    address = cfg.server_address
    sock = address[len("unix://"):] if address.startswith("unix://") else address
    return os.path.join(os.path.dirname(sock) or "/run/tetrad", "status.json")


class Daemon:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stopping = False
        self.started_at = time.monotonic()
        self.features = None
        self.sensor: ProcessSensor | None = None
        self.exporters = None
        self._pending: list = []
        self._ready = False
        self._selftest_records: list = []
        self.lost_reported: dict[str, int] = {}
        self.poller = Poller()
        self.policies: PolicyManager | None = None
        self.reload_requested = False

    # -- start-up -------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        self.features = features_mod.detect(btf_path=cfg.btf)
        for line in self.features.summary_lines():
            log.info("kernel: %s", line)
        if not self.features.raw_tracepoints:
            raise StartupError("this kernel has no raw tracepoints; tetrad's process sensor needs them")
        self.cgroup_root = cfg.cgroup_root or self.features.cgroup_v2_root
        try:
            btf = Btf.load(cfg.btf)
            macros = offsets.resolve(btf)
        except (OSError, BtfError, offsets.OffsetError) as e:
            raise StartupError(f"cannot resolve kernel struct offsets from {cfg.btf}: {e}") from e
        try:
            policy_macros = offsets.resolve(btf, offsets.PROCESS_MEMBERS + offsets.POLICY_MEMBERS)
        except offsets.OffsetError as e:
            raise StartupError(f"cannot resolve the offsets tracing policies need: {e}") from e
        pages = ring_pages(cfg.rb_size or cfg.rb_size_total, os.cpu_count() or 1)
        self.sensor = ProcessSensor(macros, pages)
        log.info("process sensor: raw tracepoints sched_process_exec, sched_process_fork, "
                 "sched_process_exit; ring buffer %d KiB", pages * 4)
        self.sensor.open(self._on_record)
        observed = selftest.run(self.sensor, self._poll_selftest, self.cgroup_root)
        log.info("self-test passed: ppid, loginuid, cwd, cgroup id, credentials, namespaces "
                 "and argv read through BTF offsets match /proc (cwd %s)", observed["cwd"])

        self.clock = KtimeClock()
        self.node_name = config_mod.node_name(cfg)
        self.cache = ProcessCache(max_size=cfg.process_cache_size)
        self.builder = EventBuilder(self.node_name, self.clock, host_namespaces(cfg.procfs),
                                    with_creds=cfg.enable_process_cred, with_ns=cfg.enable_process_ns)
        self.exporters = build_exporters(cfg)
        self.observer = Observer(self.builder, self.cache, self._sink)
        known = procfs.scan(cfg.procfs, self.cgroup_root)
        for info in known:
            self.observer.add_procfs(info)
        log.info("%d running processes read from %s", len(known), cfg.procfs)
        # records that arrived while /proc was read
        self._ready = True
        pending, self._pending = self._pending, []
        for rec in pending:
            self.observer.handle(rec)
        self.poller.register(self.sensor.fileno(), self.sensor.consume)
        self.start_policies(policy_macros, pages)
        self.startup_s = time.monotonic() - t0
        log.info("ready in %.2fs", self.startup_s)

    def start_policies(self, macros: dict, rb_pages: int) -> None:
        """The TracingPolicy engine (tetrad/policy/): its events go where the process events go."""
        self.policies = PolicyManager(
            self.cfg.tracing_policy_dir, self.features, macros, rb_pages,
            emit=self.observer.emit, builder=self.builder, cache=self.cache, poller=self.poller,
            extra_file=self.cfg.tracing_policy, procfs=self.cfg.procfs,
            sync_processes=self.sensor.consume)
        self.policies.start()

    def request_reload(self, _signum, _frame) -> None:
        self.reload_requested = True

    def _on_record(self, rec) -> None:
        if self._ready:
            self.observer.handle(rec)
        elif rec.type == RECORD_SELFTEST:
            self._selftest_records.append(rec)
        else:
            self._pending.append(rec)

    def _poll_selftest(self, timeout_ms: int) -> list:
        self.sensor.poll(timeout_ms)
        return self._selftest_records

    def _sink(self, kind: str, event: dict, line: str) -> None:
        self.exporters.write(line)

    # -- serving --------------------------------------------------------------
    def serve(self) -> None:
        next_flush = next_tick = time.monotonic()
        next_clock = next_tick + 60
        while not self.stopping:
            self.poller.wait(POLL_MS)
            if self.reload_requested:
                self.reload_requested = False
                log.info("SIGHUP: re-reading tracing policies")
                self.policies.reload()
            self.policies.tick()
            now = time.monotonic()
            if now >= next_flush:
                self.exporters.flush()
                next_flush = now + FLUSH_EVERY_S
            if now >= next_tick:
                self.housekeeping()
                next_tick = now + HOUSEKEEPING_EVERY_S
            if now >= next_clock:
                self.clock.refresh()
                next_clock = now + 60

    def housekeeping(self) -> None:
        self.cache.gc()
        lost = self.sensor.lost()
        for kind, total in lost.items():
            before = self.lost_reported.get(kind, 0)
            if total > before:
                log.warning("kernel dropped %d %s records (ring buffer full); %d in total. "
                            "Raise --rb-size.", total - before, kind, total)
        policy_lost = self.policies.lost()
        if policy_lost > self.lost_reported.get("policy", 0):
            log.warning("kernel dropped %d policy records (ring buffer full); %d in total. "
                        "Raise --rb-size.", policy_lost - self.lost_reported.get("policy", 0), policy_lost)
        lost["policy"] = policy_lost
        self.lost_reported = lost
        self.write_status()

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "startup_s": round(getattr(self, "startup_s", 0.0), 3),
            "events": dict(self.observer.counts),
            "lost_in_kernel": self.sensor.lost() if self.sensor else {},
            "process_cache": self.cache.stats(),
            "exporters": self.exporters.stats() if self.exporters else {},
            "features": self.features.to_dict() if self.features else {},
            "policies": self.policies.list() if self.policies else [],
        }

    def write_status(self) -> None:
        path = status_path(self.cfg)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.status(), f)
            os.replace(tmp, path)
        except OSError as e:
            log.debug("cannot write %s: %s", path, e)

    # -- stop -----------------------------------------------------------------
    def request_stop(self, signum, _frame) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping = True

    def close(self) -> None:
        if self.policies is not None:
            self.policies.close()
        if self.sensor is not None:
            # drain what the kernel already queued, then detach
            try:
                self.sensor.poll(0)
            except Exception:
                pass
            self.sensor.close()
        if self.exporters is not None:
            self.exporters.close()
        try:
            os.unlink(status_path(self.cfg))
        except OSError:
            pass


def run(cfg) -> int:
    daemon = Daemon(cfg)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)
    try:
        daemon.start()
        daemon.write_status()
        daemon.serve()
    except (StartupError, selftest.SelfTestError) as e:
        log.error("%s", e)
        return 1
    finally:
        daemon.close()
    log.info("stopped")
    return 0
