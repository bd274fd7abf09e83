"""Policy event and event type counters as Prometheus renders them."""

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from tetrad.metrics import DaemonCollector, EventStats, parse_listen


def test_policy_events_by_policy_and_hook():
    stats = EventStats()
    events = [
        ("process_kprobe", {"process_kprobe": {"policy_name": "fs", "function_name": "security_file_permission"}}),
        ("process_kprobe", {"process_kprobe": {"policy_name": "fs", "function_name": "security_file_permission"}}),
        ("process_tracepoint", {"process_tracepoint": {"policy_name": "rm", "subsys": "syscalls",
                                                       "event": "sys_enter_unlinkat"}}),
        ("process_uprobe", {"process_uprobe": {"policy_name": "ssl", "symbol": "SSL_write"}}),
        ("process_exec", {"process_exec": {"process": {}}}),
        ("rate_limit_info", {"rate_limit_info": {"number_of_dropped_process_events": "3"}}),
    ]
    for kind, ev in events:
        stats.count(kind, ev)
    daemon = SimpleNamespace(event_stats=stats, sensor=None, export_controls=None, api=None, cache=None,
                             exporters=None,
                             cfg=SimpleNamespace(process_cache_size=100),
                             policies_snapshot=[{"name": "fs", "state": "enabled"},
                                                {"name": "old", "state": "disabled"}])
    reg = CollectorRegistry()
    reg.register(DaemonCollector(daemon))
    text = generate_latest(reg).decode()
    assert 'tetrad_policy_events_total{hook="security_file_permission",policy="fs"} 2.0' in text
    assert 'tetrad_policy_events_total{hook="syscalls:sys_enter_unlinkat",policy="rm"} 1.0' in text
    assert 'tetrad_policy_events_total{hook="SSL_write",policy="ssl"} 1.0' in text
    assert 'tetrad_events_total{type="PROCESS_KPROBE"} 2.0' in text
    assert 'tetrad_events_total{type="RATE_LIMIT_INFO"} 1.0' in text
    assert 'tetrad_tracingpolicy_loaded{state="enabled"} 1.0' in text
    assert 'tetrad_tracingpolicy_loaded{state="disabled"} 1.0' in text


def test_listen_addresses():
    assert parse_listen(":2112") == ("0.0.0.0", 2112)
    assert parse_listen("127.0.0.1:9") == ("127.0.0.1", 9)
    assert parse_listen("[::1]:2112") == ("::1", 2112)
