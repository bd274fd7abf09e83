"""`tetrad getevents` against a live daemon: each filter flag, compact and
JSON output, field selection, timestamps, reconnect."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tetrad.encoder.goquote import go_quote
from conftest import Daemon, execs_with
from userside import getevents, marker_binary, status, subscriptions, wait_subscribers


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("getevents"))
    d.wait_ready()
    yield d
    d.stop()


@pytest.fixture
def marker(tmp_path):
    return marker_binary(tmp_path)


def run_marker(marker, *args) -> int:
    p = subprocess.run([str(marker), *args])
    return p.returncode


def test_compact_exec_and_exit_lines(live, marker):
    since = subscriptions(live)
    node = status(live)["node_name"]
    ge = getevents(live, "-o", "compact", "--color", "never", "--process", re.escape(marker.name) + "$")
    try:
        wait_subscribers(live, 1, since)
        run_marker(marker, "one two", "x")
        execs = ge.wait_for(lambda l: l.startswith("\U0001F680"), what="exec line")
        exits = ge.wait_for(lambda l: l.startswith("\U0001F4A5"), what="exit line")
    finally:
        ge.stop()
    exported = live.wait_for(lambda evs: [e for e in execs_with(evs, "x") if e["process"]["binary"] == str(marker)])
    arguments = exported[0]["process"]["arguments"]
    assert " " in arguments
    assert execs == [f"\U0001F680 process {node} {marker} {go_quote(arguments)}"]
    assert exits == [f"\U0001F4A5 exit    {node} {marker} {go_quote(arguments)} 0"]
    assert all(marker.name in l for l in ge.lines)


def test_json_output_is_the_daemons_event(live, marker):
    since = subscriptions(live)
    ge = getevents(live, "--process", re.escape(marker.name))
    try:
        wait_subscribers(live, 1, since)
        run_marker(marker, "json-check")
        line = ge.wait_for(lambda l: '"process_exec"' in l, what="exec json")[0]
    finally:
        ge.stop()
    ev = json.loads(line)
    assert ev["process_exec"]["process"]["binary"] == str(marker)
    assert ev["process_exec"]["process"]["arguments"] == "json-check"
    exported = live.wait_for(lambda evs: [e for e in evs if e.get("process_exec", {}).get("process", {})
                                          .get("exec_id") == ev["process_exec"]["process"]["exec_id"]])
    assert exported[0] == ev


def test_event_types_and_field_filters(live, marker):
    since = subscriptions(live)
    ge_types = getevents(live, "-e", "PROCESS_EXIT", "--process", re.escape(marker.name))
    ge_fields = getevents(live, "-f", "process.binary,process.pid", "--process", re.escape(marker.name))
    ge_exclude = getevents(live, "-F", "parent,process.arguments", "--process", re.escape(marker.name))
    try:
        wait_subscribers(live, 3, since)
        run_marker(marker, "filters")
        exits = ge_types.wait_for(lambda l: '"process_exit"' in l, what="exit")
        fields = ge_fields.wait_for(lambda l: '"process_exec"' in l, what="included fields")
        excluded = ge_exclude.wait_for(lambda l: '"process_exec"' in l, what="excluded fields")
        ge_types.drain(0.5)
    finally:
        for g in (ge_types, ge_fields, ge_exclude):
            g.stop()
    assert all('"process_exit"' in l for l in ge_types.lines)
    assert json.loads(exits[0])["process_exit"]["process"]["binary"] == str(marker)
    f = json.loads(fields[0])
    assert set(f["process_exec"]) == {"process"}
    assert set(f["process_exec"]["process"]) == {"binary", "pid"}
    assert "node_name" in f and "time" in f
    x = json.loads(excluded[0])["process_exec"]
    assert "parent" not in x and "arguments" not in x["process"] and x["process"]["binary"] == str(marker)


def test_pid_filter(live):
    since = subscriptions(live)
    ge = None
    sleeper = subprocess.Popen(["/bin/sh", "-c", "read x; exec /bin/sleep 0"], stdin=subprocess.PIPE)
    try:
        ge = getevents(live, "--pid", str(sleeper.pid), "-o", "compact", "--color", "never")
        wait_subscribers(live, 1, since)
        sleeper.communicate(b"go\n")
        ge.wait_for(lambda l: l.startswith("\U0001F4A5"), what="exit of the pid")
        ge.drain(0.3)
    finally:
        if ge:
            ge.stop()
    assert ge.lines and all("/bin/sleep" in l for l in ge.lines)


def test_namespace_pod_container_policy_filters_exclude_host_events(live, marker):
    """Host processes have no pod: --namespace/--pod/--container/--policy-names
    select none of them, --host selects them."""
    since = subscriptions(live)
    negative = [getevents(live, *flags, "--process", re.escape(marker.name)) for flags in
                (["--namespace", "default"], ["--pod", "."], ["--containers", "."],
                 ["--policy-names", "some-policy"], ["--namespace-regex", "."])]
    host = getevents(live, "--host", "--process", re.escape(marker.name))
    try:
        wait_subscribers(live, len(negative) + 1, since)
        run_marker(marker, "ns-check")
        host.wait_for(lambda l: '"process_exit"' in l, what="host events")
        time.sleep(0.5)
        leaked = [g.drain(0.2) for g in negative]
    finally:
        for g in negative + [host]:
            g.stop()
    assert leaked == [[]] * len(negative)


def test_timestamps(live, marker):
    since = subscriptions(live)
    ge = getevents(live, "-o", "compact", "--timestamps", "--process", re.escape(marker.name))
    try:
        wait_subscribers(live, 1, since)
        run_marker(marker)
        line = ge.wait_for(lambda l: "\U0001F680" in l, what="exec")[0]
    finally:
        ge.stop()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z \U0001F680 process ", line), line


def test_bad_flags_and_no_daemon(tmp_path):
    from conftest import tetrad_cmd
    r = subprocess.run(tetrad_cmd() + ["getevents", "-e", "PROCESS_EXCE", f"--server-address=unix://{tmp_path}/x"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown event type 'PROCESS_EXCE'" in r.stderr
    r = subprocess.run(tetrad_cmd() + ["getevents", f"--server-address=unix://{tmp_path}/x"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == 1 and "is the daemon running?" in r.stderr


def test_reconnect_follows_a_restarted_daemon(start_daemon, tmp_path):
    marker = marker_binary(tmp_path)
    d1 = start_daemon()
    ge = getevents(d1, "-o", "compact", "--reconnect", "--reconnect-wait", "200ms",
                   "--process", re.escape(marker.name))
    try:
        wait_subscribers(d1, 1)
        subprocess.run([str(marker), "first"])
        ge.wait_for(lambda l: "first" in l, what="event from the first daemon")
        d1.stop()
        d2 = start_daemon()
        wait_subscribers(d2, 1, timeout=15)
        subprocess.run([str(marker), "second"])
        ge.wait_for(lambda l: "second" in l, what="event from the restarted daemon")
    finally:
        ge.stop()
