"""Prometheus metrics (`--metrics-server :2112`), Tetragon's names with the
`tetrad_` prefix.  The daemon's event path only bumps plain counters
(`EventStats`); the values are turned into metric families when Prometheus
scrapes, in the HTTP server's thread, so metrics cost the hot path next to
nothing.  Process CPU and memory come from prometheus_client's standard
`process_*` collector."""

from __future__ import annotations

import bisect
import collections
import logging

from .eventtypes import EVENT_TYPES, POLICY_KINDS

log = logging.getLogger("tetrad.metrics")

# Handling latency buckets, in microseconds as Tetragon's tetragon_handling_latency.
LATENCY_BUCKETS_US = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000, 100000)


def policy_hook(kind: str, body: dict) -> str:
    if kind == "process_tracepoint":
        return f"{body.get('subsys', '')}:{body.get('event', '')}"
    if kind == "process_uprobe":
        return body.get("symbol", "")
    return body.get("function_name", "")


class LatencyHistogram:
    """A lock-free histogram for one thread's observations."""

    def __init__(self, buckets=LATENCY_BUCKETS_US):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append((str(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class EventStats:
    """Counters the daemon's sink updates for every event."""

    def __init__(self):
        self.by_type: collections.Counter = collections.Counter()
        self.by_policy: collections.Counter = collections.Counter()
        self.latency: dict[str, LatencyHistogram] = collections.defaultdict(LatencyHistogram)
        self.exported_events = 0   # once per event, however many exporters take it
        self.exported_bytes = 0

    def exported(self, line: str) -> None:
        self.exported_events += 1
        self.exported_bytes += len(line) + 1

    def count(self, kind: str, event: dict) -> None:
        self.by_type[kind] += 1
        if kind in POLICY_KINDS or kind == "process_usdt":
            body = event.get(kind) or {}
            self.by_policy[(body.get("policy_name", ""), policy_hook(kind, body))] += 1


class DaemonCollector:
    """Reads the daemon's state at scrape time."""

    def __init__(self, daemon):
        self.daemon = daemon

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        d = self.daemon
        stats: EventStats = d.event_stats
        events = CounterMetricFamily("tetrad_events", "The total number of tetrad events", labels=["type"])
        for kind, n in list(stats.by_type.items()):
            events.add_metric([EVENT_TYPES.get(kind, (kind,))[0]], n)
        yield events
        policy = CounterMetricFamily("tetrad_policy_events", "Policy events calls observed",
                                     labels=["policy", "hook"])
        for (name, hook), n in list(stats.by_policy.items()):
            policy.add_metric([name, hook], n)
        yield policy
        lost = CounterMetricFamily("tetrad_observer_ringbuf_events_lost",
                                   "Number of ring buffer records lost in the kernel", labels=["type"])
        counts = {"exec": 0, "exit": 0, "clone": 0}     # the process sensor's record types
        counts.update(d.sensor.lost() if d.sensor else {})
        for kind, n in counts.items():
            lost.add_metric([kind], n)
        yield lost
        export = d.export_controls
        yield CounterMetricFamily("tetrad_export_ratelimit_events_dropped",
                                  "Number of events dropped on export due to rate limiting",
                                  value=export.rate_limit_dropped if export else 0)
        yield CounterMetricFamily("tetrad_export_filtered_events",
                                  "Number of events the export allow/deny lists filtered out",
                                  value=export.filtered_out if export else 0)
        yield CounterMetricFamily("tetrad_events_exported", "Total number of events exported",
                                  value=stats.exported_events)
        yield CounterMetricFamily("tetrad_events_exported_bytes", "Number of bytes exported for events",
                                  value=stats.exported_bytes)
        api = d.api
        yield CounterMetricFamily("tetrad_api_slow_client_events_dropped",
                                  "Events dropped for API clients that fell behind",
                                  value=api.dropped_total if api else 0)
        cache = d.cache.stats() if getattr(d, "cache", None) else {}
        yield GaugeMetricFamily("tetrad_process_cache_size", "The size of the process cache",
                                value=cache.get("size", 0))
        yield GaugeMetricFamily("tetrad_process_cache_capacity", "The capacity of the process cache",
                                value=d.cfg.process_cache_size)
        yield CounterMetricFamily("tetrad_process_cache_evictions", "Number of process cache LRU evictions",
                                  value=cache.get("evictions", 0))
        misses = CounterMetricFamily("tetrad_process_cache_misses", "Number of process cache misses",
                                     labels=["operation"])
        misses.add_metric(["get"], cache.get("misses", 0))
        yield misses
        loaded = GaugeMetricFamily("tetrad_tracingpolicy_loaded", "The number of loaded tracing policy by state",
                                   labels=["state"])
        states = collections.Counter(p.get("state", "unknown") for p in (d.policies_snapshot or []))
        for state in ("enabled", "disabled", "error", "load_error"):
            loaded.add_metric([state], states.pop(state, 0))
        for state, n in states.items():
            loaded.add_metric([state], n)
        yield loaded
        latency = HistogramMetricFamily("tetrad_handling_latency", "The latency of handling messages in us",
                                        labels=["op"])
        for op, h in list(stats.latency.items()):
            latency.add_metric([op], h.cumulative(), h.total)
        yield latency


def parse_listen(address: str) -> tuple[str, int]:
    """`:2112`, `127.0.0.1:2112`, `[::1]:2112` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected [host]:port such as :2112, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(daemon, address: str):
    """Start the HTTP server in a thread; returns it (shutdown() stops it).
    OSError if the address cannot be bound."""
    import socket
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app

    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    ProcessCollector(registry=registry)
    host, port = parse_listen(address)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    httpd = make_server(host, port, make_wsgi_app(registry), Server, handler_class=QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="tetrad-metrics", daemon=True).start()
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    return httpd
