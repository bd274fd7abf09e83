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

from . import __version__
from . import config as config_mod
from . import features as features_mod
from . import metrics, offsets, selftest, systemd
from .api import commands as api_commands
from .api.server import ApiServer, ServerError
from .bpf_loader import release_compiler_memory
from .btf import Btf, BtfError
from .containers.resolver import ContainerResolver
from .events import EventBuilder
from .exporter import build_exporters
from .filters.export import ExportControls
from .observer import Observer
from .poller import Poller
from .policy.manager import PolicyManager
from .process import procfs
from .process.cache import ProcessCache
from .sensors.process import ProcessSensor, ring_pages
from .sensors.records import RECORD_NAMES, RECORD_SELFTEST
from .timefmt import KtimeClock, rfc3339

log = logging.getLogger("tetrad.daemon")

POLL_MS = 100
FLUSH_EVERY_S = 0.2
HOUSEKEEPING_EVERY_S = 1.0
RATE_WINDOW_S = 10.0      # events per second in `tetrad status` are averaged over this
STARTUP_METADATA_WAIT_S = 3.0   # to name the pods of running processes (containerd, API server)


class StartupError(Exception):
    pass


def host_namespaces(procfs_root: str) -> tuple:
    """Namespace inodes of PID 1, for `is_host`."""
    return procfs.namespaces_of(procfs_root, 1)


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
        self.containers: ContainerResolver | None = None
        self.k8s = None
        self._pending: list = []
        self._ready = False
        self._selftest_records: list = []
        self.lost_reported: dict[str, int] = {}
        self.export_controls: ExportControls | None = None
        self.event_stats = metrics.EventStats()
        self.api: ApiServer | None = None
        self.metrics_server = None
        self.policies_snapshot: list | None = None
        self._rate_samples: list = []
        self.notifier = systemd.ServiceNotifier()
        self.reload_requested = False
        # Run on SIGHUP (`systemctl reload tetrad`): each re-reads what it owns
        # (the policy engine adds its own).  Called from the event loop.
        self.reload_hooks: list = []
        self.poller = Poller()
        self.policy_manager: PolicyManager | None = None

    # -- start-up -------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        t0 = time.monotonic()
        try:
            self.export_controls = ExportControls(cfg)
        except config_mod.ConfigError as e:
            raise StartupError(str(e)) from None
        log.info("export controls: %s", self.export_controls.summary())
        self.features = features_mod.detect(btf_path=cfg.btf)
        release_compiler_memory()   # the probe programs were compiled in this process
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
        ncpus = os.cpu_count() or 1
        pages = ring_pages(cfg.rb_size_total or cfg.rb_size * ncpus, ncpus)
        self.sensor = ProcessSensor(macros, pages)
        log.info("process sensor: raw tracepoints sched_process_exec, sched_process_fork, "
                 "sched_process_exit; ring buffer %d KiB", pages * 4)
        self.sensor.open(self._on_record)
        observed = selftest.run(self.sensor, self._poll_selftest, self.cgroup_root,
                                 procfs=cfg.procfs)
        log.info("self-test passed: ppid, loginuid, cwd, cgroup id, credentials, namespaces "
                 "and argv read through BTF offsets match /proc (cwd %s)", observed["cwd"])

        self.clock = KtimeClock()
        self.node_name = config_mod.node_name(cfg)
        self.cache = ProcessCache(max_size=cfg.process_cache_size)
        self.builder = EventBuilder(self.node_name, self.clock, host_namespaces(cfg.procfs),
                                    with_creds=cfg.enable_process_cred, with_ns=cfg.enable_process_ns)
        self.exporters = build_exporters(cfg)
        self.k8s = self._start_k8s() if cfg.enable_k8s_api else None
        self.containers = ContainerResolver(cfg.procfs, self.cgroup_root, cfg.containerd_address,
                                            k8s=self.k8s)
        self.containers.start()
        self.containers.wait_synced(STARTUP_METADATA_WAIT_S)
        self.observer = Observer(self.builder, self.cache, self._sink, self.containers)
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
        self._start_api()
        self.startup_s = time.monotonic() - t0
        log.info("ready in %.2fs", self.startup_s)
        self.notifier.ready(systemd.status_line(self.status(), 0.0))

    def _start_api(self) -> None:
        """The unix socket (getevents, status, tracingpolicy) and metrics."""
        self.api = ApiServer(self.cfg.server_address, self.cfg.api_client_queue)
        api_commands.register(self.api, self)
        try:
            self.api.start()
        except (ServerError, ValueError, OSError) as e:
            raise StartupError(f"API socket: {e}") from None
        log.info("API on unix://%s (%s)", self.api.path, ", ".join(sorted(["getevents", *self.api.commands])))
        if self.cfg.metrics_server:
            try:
                self.metrics_server = metrics.serve(self, self.cfg.metrics_server)
            except (ValueError, OSError) as e:
                raise StartupError(f"--metrics-server {self.cfg.metrics_server}: {e}") from None
    def _start_k8s(self):
        """Kubernetes mode: pod metadata and TracingPolicy resources from the
        API server (the policy loader reads them through K8sWatcher.on_policy)."""
        from .containers.k8s import K8sWatcher
        k8s = K8sWatcher(self.node_name, self.cfg.kubeconfig)
        try:
            k8s.start()
        except Exception as e:
            where = self.cfg.kubeconfig or "the in-cluster service account"
            raise StartupError(f"--enable-k8s-api: cannot configure the Kubernetes client "
                               f"from {where}: {e}") from e
        k8s.synced.wait(STARTUP_METADATA_WAIT_S)
        return k8s

    def start_policies(self, macros: dict, rb_pages: int) -> None:
        """The TracingPolicy engine (tetrad/policy/): its events go where the process events go;
        SIGHUP (`systemctl reload tetrad`) re-reads the policy directory."""
        self.policy_manager = PolicyManager(
            self.cfg.tracing_policy_dir, self.features, macros, rb_pages,
            emit=self.observer.emit, builder=self.builder, cache=self.cache, poller=self.poller,
            extra_file=self.cfg.tracing_policy, procfs=self.cfg.procfs,
            sync_processes=self.sensor.consume, default_backend=self.cfg.hook_backend,
            workloads=self.containers.workloads)
        self.policy_manager.start()
        self.reload_hooks.append(self.policy_manager.reload)
        # policies scoped to pods follow containers; Kubernetes mode's policy resources load like files
        self.containers.on_change = self.policy_manager.workloads_changed
        if self.k8s is not None:
            self.k8s.on_change = self.containers.k8s_changed
            self.containers.k8s_changed()
            self.k8s.on_policy = self.policy_manager.kubernetes_policy
            for document in self.k8s.policies():   # listed before the engine started
                self.policy_manager.kubernetes_policy("ADDED", document)
        self.policy_manager.refresh_scopes()

    def _on_record(self, rec) -> None:
        if self._ready:
            t0 = time.perf_counter_ns()
            self.observer.handle(rec)
            self.event_stats.latency[RECORD_NAMES.get(rec.type, str(rec.type))].observe(
                (time.perf_counter_ns() - t0) / 1000)
        elif rec.type == RECORD_SELFTEST:
            self._selftest_records.append(rec)
        else:
            self._pending.append(rec)

    def _poll_selftest(self, timeout_ms: int) -> list:
        self.sensor.poll(timeout_ms)
        return self._selftest_records

    def _sink(self, kind: str, event: dict, line: str) -> None:
        controls = self.export_controls
        line = controls.redact(event, line)
        self.event_stats.count(kind, event)
        if self.api is not None:
            self.api.publish(kind, event, line)
        exported = controls.select(event, line)
        if exported is not None:
            self.event_stats.exported(exported)
            # the dict goes too (the journal takes fields from it); field filters
            # change the line only, so the dict then comes from the line
            self.exporters.write_event(event if exported is line else json.loads(exported), exported)

    def _report_rate_limit(self) -> None:
        """Announce what the export rate limit dropped (Tetragon's rate_limit_info)."""
        dropped = self.export_controls.rate_limit_report()
        if not dropped:
            return
        event = {"rate_limit_info": {"number_of_dropped_process_events": str(dropped)},
                 "node_name": self.node_name, "time": rfc3339(time.time_ns())}
        line = json.dumps(event, separators=(",", ":"))
        self.event_stats.count("rate_limit_info", event)
        if self.api is not None:
            self.api.publish("rate_limit_info", event, line)
        self.exporters.write(line)
        log.warning("export rate limit dropped %d events", dropped)

    # -- serving --------------------------------------------------------------
    def serve(self) -> None:
        next_flush = next_tick = time.monotonic()
        next_clock = next_tick + 60
        while not self.stopping:
            self.poller.wait(POLL_MS)
            if self.api is not None:
                self.api.run_commands()
            self.policy_manager.tick()
            now = time.monotonic()
            self.notifier.tick(now)
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
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
        policy_lost = self.policy_manager.lost()
        if policy_lost > self.lost_reported.get("policy", 0):
            log.warning("kernel dropped %d policy records (ring buffer full); %d in total. "
                        "Raise --rb-size.", policy_lost - self.lost_reported.get("policy", 0), policy_lost)
        lost["policy"] = policy_lost
        self.lost_reported = lost
        self._report_rate_limit()
        now = time.monotonic()
        self._rate_samples = [s for s in self._rate_samples if now - s[0] <= RATE_WINDOW_S]
        self._rate_samples.append((now, dict(self.event_stats.by_type)))
        self.write_status()
        self.notifier.refresh_status(time.monotonic(), self.status)

    def reload(self) -> None:
        """Re-read what can change without a restart, telling systemd.
        A hook that fails is logged; the daemon keeps what it had."""
        log.info("reloading")
        self.notifier.reloading()
        for hook in self.reload_hooks:
            try:
                hook()
            except Exception as e:
                log.error("reload: %s failed: %s", getattr(hook, "__qualname__", hook), e)
            self.notifier.tick(time.monotonic())   # a slow compile is not a stall
        self.notifier.ready(systemd.status_line(self.status(), 0.0))
        log.info("reloaded")

    def _refresh_policies(self) -> None:
        """Policies and their state, for status; kept for metrics, which read
        from their own thread (status runs every second, in write_status)."""
        pm = getattr(self, "policy_manager", None)
        if pm is None:
            return
        try:
            self.policies_snapshot = api_commands.to_jsonable(pm.list())
        except Exception as e:
            log.warning("cannot list policies: %s", e)

    def events_per_second(self) -> tuple[dict, float]:
        """Events per second by type over the last RATE_WINDOW_S, and the window."""
        if len(self._rate_samples) < 2:
            return {}, 0.0
        (t0, first), (t1, last) = self._rate_samples[0], self._rate_samples[-1]
        window = t1 - t0
        return {k: round((n - first.get(k, 0)) / window, 1) for k, n in last.items()}, window

    def status(self) -> dict:
        from .probe import hook_choices
        self._refresh_policies()
        rates, window = self.events_per_second()
        containerd = getattr(self, "containerd", None)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "node_name": getattr(self, "node_name", ""),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "startup_s": round(getattr(self, "startup_s", 0.0), 3),
            "hooks": hook_choices(self.features) if self.features else {},
            "policies": self.policies_snapshot,
            "events": dict(self.event_stats.by_type),
            "events_per_s": rates,
            "rate_window_s": round(window, 1),
            "export": self.export_controls.stats() if self.export_controls else {},
            "api": self.api.stats() if self.api else {},
            "containerd": containerd.status() if hasattr(containerd, "status") else None,
            "lost_in_kernel": self.sensor.lost() if self.sensor else {},
            # policy records handled, undecodable (dropped, so counted here), enforced
            "policy_records": dict(self.policy_manager.counts) if self.policy_manager else {},
            "process_cache": self.cache.stats(),
            "containers": self.containers.stats() if self.containers else {},
            "exporters": self.exporters.stats() if self.exporters else {},
            "features": self.features.to_dict() if self.features else {},
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
        self.notifier.stopping()

    def request_reload(self, _signum, _frame) -> None:
        self.reload_requested = True

    def close(self) -> None:
        if self.api is not None:
            self.api.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self.policy_manager is not None:
            self.policy_manager.close()
        if self.sensor is not None:
            # drain what the kernel already queued, then detach
            try:
                self.sensor.poll(0)
            except Exception:
                pass
            self.sensor.close()
        if self.containers is not None:
            self.containers.close()
        if self.k8s is not None:
            self.k8s.close()
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
