"""Tetragon's filter syntax and semantics on recorded Tetragon-format events:
every allow/deny key, field filters, redaction and the rate limiter."""

import json

import pytest

from tetrad.filters.fields import apply_all, parse_field_filters
from tetrad.filters.jsonlines import FilterError
from tetrad.filters.match import FilterList, passes
from tetrad.filters.ratelimit import RateLimiter
from tetrad.filters.redaction import Redactor

POD = {"namespace": "prod", "name": "web-7d9f", "container": {"id": "abc", "name": "nginx"},
       "pod_labels": {"app": "web", "tier": "front", "replicas": "3"}}
EXEC_POD = {"process_exec": {
    "process": {"pid": 42, "binary": "/usr/sbin/nginx", "arguments": "-g daemon off;", "pod": POD,
                "docker": "abc123def", "in_init_tree": True},
    "parent": {"pid": 1, "binary": "/usr/bin/containerd-shim", "arguments": "-namespace k8s.io"},
    "ancestors": [{"pid": 0, "binary": "/sbin/init"}]}, "node_name": "n1", "time": "2024-01-01T00:00:00Z"}
EXEC_HOST = {"process_exec": {"process": {"pid": 7, "binary": "/usr/bin/curl", "arguments": "https://x"},
                              "parent": {"pid": 6, "binary": "/bin/bash"}}, "node_name": "n1"}
EXIT_HOST = {"process_exit": {"process": {"pid": 7, "binary": "/usr/bin/curl"}, "status": 1}, "node_name": "n1"}
KPROBE = {"process_kprobe": {"process": {"pid": 8, "binary": "/usr/bin/cat"}, "function_name": "security_file_permission",
                             "policy_name": "file-monitoring", "args": []}, "node_name": "n1"}
ALL = {"exec_pod": EXEC_POD, "exec_host": EXEC_HOST, "exit_host": EXIT_HOST, "kprobe": KPROBE}


def selected(allow="", deny=""):
    a, d = FilterList.parse(allow, "allow"), FilterList.parse(deny, "deny")
    return {name for name, ev in ALL.items() if passes(a, d, ev)}


@pytest.mark.parametrize("spec,expected", [
    ({"event_set": ["PROCESS_EXEC"]}, {"exec_pod", "exec_host"}),
    ({"event_set": [5, "PROCESS_KPROBE"]}, {"exit_host", "kprobe"}),
    ({"binary_regex": ["curl$"]}, {"exec_host", "exit_host"}),
    ({"binary_regex": ["nginx", "cat"]}, {"exec_pod", "kprobe"}),
    ({"parent_binary_regex": ["shim"]}, {"exec_pod"}),
    ({"ancestor_binary_regex": ["^/sbin/init$"]}, {"exec_pod"}),
    ({"namespace": ["prod"]}, {"exec_pod"}),
    ({"namespace": [""]}, {"exec_host", "exit_host", "kprobe"}),
    ({"namespace_regex": ["^pr"]}, {"exec_pod"}),
    ({"pod_regex": ["^web-"]}, {"exec_pod"}),
    ({"container_name_regex": ["ngin"]}, {"exec_pod"}),
    ({"container_id": ["^abc1"]}, {"exec_pod"}),
    ({"pid": [7]}, {"exec_host", "exit_host"}),
    ({"pid_set": [6]}, {"exec_host", "exit_host"}),      # child 7 learnt from its exec
    ({"arguments_regex": ["daemon off"]}, {"exec_pod"}),
    ({"parent_arguments_regex": ["k8s\\.io"]}, {"exec_pod"}),
    ({"labels": ["app=web,tier in (front, back)"]}, {"exec_pod"}),
    ({"labels": ["app!=web"]}, set()),
    ({"labels": ["!missing,replicas>2"]}, {"exec_pod"}),
    ({"policy_names": ["file-monitoring"]}, {"kprobe"}),
    ({"in_init_tree": True}, {"exec_pod"}),
    ({"in_init_tree": False}, {"exec_host", "exit_host", "kprobe"}),
    ({"event_set": ["PROCESS_EXEC"], "namespace": [""]}, {"exec_host"}),   # keys ANDed
])
def test_each_key(spec, expected):
    assert selected(allow=json.dumps(spec)) == expected


def test_lines_are_ored_and_deny_wins():
    allow = '{"binary_regex": ["curl"]}\n{"namespace": ["prod"]}'
    assert selected(allow) == {"exec_pod", "exec_host", "exit_host"}
    assert selected(allow, '{"event_set": ["PROCESS_EXIT"]}') == {"exec_pod", "exec_host"}
    assert selected("", '{"binary_regex": ["."]}') == set()
    assert selected() == set(ALL)


@pytest.mark.parametrize("text,message", [
    ('{"binary_regex": ["a"]}\n{"binry_regex": ["x"]}', 'deny: line 2: unknown key "binry_regex"'),
    ('{"binary_regex": ["(unclosed"]}', 'deny: line 1: key "binary_regex": bad regular expression'),
    ('{"event_set": ["PROCESS_EXCE"]}', 'deny: line 1: key "event_set": unknown event type'),
    ('{"pid": ["7"]}', 'deny: line 1: key "pid": expected a list of process ids'),
    ('{"binary_regex": "curl"}', 'deny: line 1: key "binary_regex": expected a list of strings'),
    ('{"labels": ["a in (x"]}', 'deny: line 1: key "labels": bad label selector'),
    ('\n\n{"pid": [1]', "deny: line 3: invalid JSON"),
    ('[1]', "deny: line 1: expected a JSON object"),
])
def test_malformed_filters_name_line_and_key(text, message):
    with pytest.raises(FilterError) as e:
        FilterList.parse(text, "deny")
    assert message in str(e.value)


def test_field_filters_include_exclude_and_event_set():
    ff = parse_field_filters('{"fields": "process.binary,process.pid", "action": "INCLUDE", "event_set": ["PROCESS_EXEC"]}')
    out = apply_all(ff, EXEC_HOST)
    assert out == {"process_exec": {"process": {"pid": 7, "binary": "/usr/bin/curl"}}, "node_name": "n1"}
    assert apply_all(ff, EXIT_HOST) == EXIT_HOST                  # not in the event set
    ff = parse_field_filters('{"fields": "parent,process.arguments", "action": "EXCLUDE"}')
    out = apply_all(ff, EXEC_HOST)
    assert out["process_exec"] == {"process": {"pid": 7, "binary": "/usr/bin/curl"}}
    assert EXEC_HOST["process_exec"]["parent"]                     # the original is untouched
    ff = parse_field_filters('{"fields": "process", "action": "INCLUDE", "event_set": ["PROCESS_EXEC"], "invert_event_set": true}')
    assert apply_all(ff, EXEC_HOST) == EXEC_HOST
    assert "status" not in apply_all(ff, EXIT_HOST)["process_exit"]
    with pytest.raises(FilterError, match='line 1: key "action"'):
        parse_field_filters('{"fields": "process", "action": "KEEP"}')


def test_redaction_replaces_capture_groups():
    r = Redactor.parse('{"binary_regex": ["mysql$"], "redact": ["--password[= ](\\\\S+)", "\\\\s-p(\\\\S+)"]}\n'
                       '{"redact": ["(?:token)=(\\\\w+)"]}')
    ev = {"process_exec": {"process": {"binary": "/usr/bin/mysql", "arguments": "-u root --password=hunter2 -psecret db"},
                           "parent": {"binary": "/bin/sh", "arguments": "-c 'curl token=abc123'"}}}
    assert r.apply(ev)
    assert ev["process_exec"]["process"]["arguments"] == "-u root --password=***** -p***** db"
    assert ev["process_exec"]["parent"]["arguments"] == "-c 'curl token=*****'"
    other = {"process_exec": {"process": {"binary": "/usr/bin/psql", "arguments": "--password=x"}}}
    assert not r.apply(other)
    with pytest.raises(FilterError, match='line 1: key "redact"'):
        Redactor.parse('{"redact": ["("]}')


def test_rate_limiter_token_bucket_and_reports():
    now = [0.0]
    rl = RateLimiter(10, 60.0, clock=lambda: now[0])
    assert sum(rl.allow() for _ in range(25)) == 10
    assert rl.dropped_total == 15
    assert rl.take_report() == 0                  # not before the interval
    now[0] = 6.0                                  # 6 s refill 1 token
    assert rl.allow() and not rl.allow()
    now[0] = 60.0
    assert rl.take_report() == 16
    assert rl.take_report() == 0
