"""The daemon's export controls, live: allow/deny lists, field filters,
redaction (also seen by getevents clients), the rate limit and its
rate_limit_info events, and start-up errors for malformed filters."""

import json
import re
import subprocess
import time

import pytest
from conftest import of_type
from userside import getevents, marker_binary, status, wait_subscribers


def marker_execs(events, marker):
    return [e for e in of_type(events, "process_exec") if e["process"]["binary"] == str(marker)]


def test_allowlist_denylist_and_field_filters(start_daemon, tmp_path):
    allowed, denied = marker_binary(tmp_path), marker_binary(tmp_path)
    allow = json.dumps({"binary_regex": [re.escape(allowed.name), re.escape(denied.name)]}) + "\n" + \
        json.dumps({"event_set": ["PROCESS_EXIT"], "binary_regex": ["^/nonexistent$"]})
    deny = json.dumps({"binary_regex": [re.escape(denied.name)]})
    fields = json.dumps({"fields": "process.binary,process.arguments", "action": "INCLUDE",
                         "event_set": ["PROCESS_EXEC"]})
    d = start_daemon(f"--export-allowlist={allow}", f"--export-denylist={deny}", f"--field-filters={fields}")
    subprocess.run([str(denied), "no"])
    subprocess.run([str(allowed), "yes"])
    events = d.wait_for(lambda evs: of_type(evs, "process_exit") and evs, what="the allowed exit")
    time.sleep(0.5)
    events = d.events()
    assert {json.dumps(e, sort_keys=True) for e in of_type(events, "process_exec")} == \
        {json.dumps({"process": {"binary": str(allowed), "arguments": "yes"}}, sort_keys=True)}
    exits = of_type(events, "process_exit")
    assert [e["process"]["binary"] for e in exits] == [str(allowed)]
    assert "parent" in exits[0]                      # field filter limited to PROCESS_EXEC
    assert status(d)["export"]["filtered_out"] > 0


def test_redaction_reaches_export_and_clients(start_daemon, tmp_path):
    marker = marker_binary(tmp_path)
    redact = json.dumps({"binary_regex": [re.escape(marker.name)], "redact": [r"--password[= ](\S+)"]})
    d = start_daemon(f"--redaction-filters={redact}")
    ge = getevents(d, "--process", re.escape(marker.name))
    try:
        wait_subscribers(d, 1)
        subprocess.run([str(marker), "-u", "root", "--password=hunter2"])
        line = ge.wait_for(lambda l: '"process_exec"' in l, what="exec on the socket")[0]
    finally:
        ge.stop()
    assert json.loads(line)["process_exec"]["process"]["arguments"] == "-u root --password=*****"
    exported = d.wait_for(lambda evs: marker_execs(evs, marker))
    assert exported[0]["process"]["arguments"] == "-u root --password=*****"
    assert "hunter2" not in d.export.read_text()


def test_rate_limit_drops_and_reports(start_daemon, tmp_path):
    marker = marker_binary(tmp_path)
    allow = json.dumps({"binary_regex": [re.escape(marker.name)], "event_set": ["PROCESS_EXEC"]})
    d = start_daemon(f"--export-allowlist={allow}", "--export-rate-limit=5",
                     "--export-rate-limit-interval=3s")
    for i in range(40):
        subprocess.run([str(marker), f"n{i}"])
    infos = d.wait_for(lambda evs: of_type(evs, "rate_limit_info"), timeout=10, what="rate_limit_info")
    time.sleep(0.3)
    exported = marker_execs(d.events(), marker)
    # burst of 5, plus at most what the bucket refilled (5 per 3 s) while the loop ran
    assert 5 <= len(exported) < 40
    reported = sum(int(i["number_of_dropped_process_events"]) for i in of_type(d.events(), "rate_limit_info"))
    dropped = status(d)["export"]["rate_limit_dropped"]
    assert 40 - len(exported) == dropped
    assert 0 < reported <= dropped
    info_event = [e for e in d.events() if "rate_limit_info" in e][0]
    assert info_event["node_name"] and info_event["time"].endswith("Z")
    assert infos


@pytest.mark.parametrize("flag,text,message", [
    ("--export-denylist", '{"binary_regex": ["ok"]}\n{"binary_regexx": ["x"]}',
     '--export-denylist: line 2: unknown key "binary_regexx"'),
    ("--export-allowlist", '{"pid_set": "12"}', '--export-allowlist: line 1: key "pid_set"'),
    ("--field-filters", '{"fields": "process", "action": "DROP"}', '--field-filters: line 1: key "action"'),
    ("--redaction-filters", '{"redact": ["(x"]}', '--redaction-filters: line 1: key "redact"'),
])
def test_malformed_filter_stops_startup(start_daemon, flag, text, message):
    d = start_daemon(f"{flag}={text}", ready=False)
    assert d.proc.wait(30) != 0
    assert message in d.log_text()
