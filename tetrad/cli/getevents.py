"""`tetrad getevents`: print events like `tetra getevents`, with its flags.

Sources, as tetra picks them: JSON lines on stdin when stdin is not a
terminal or character device (`journalctl -u tetrad -o cat | tetrad
getevents -o compact`, `kubectl logs ... | tetrad getevents`), else
`--file`, else the daemon's socket (`--server-address`), where filters run
in the daemon.  `--reconnect` keeps following across daemon restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time

from .. import config as config_mod
from ..api import client, protocol
from ..encoder.compact import COLOR_MODES, CompactEncoder, EncodeError, tty_bytes
from ..eventtypes import KIND_BY_NAME
from ..filters.fields import FieldFilter, apply_all
from ..filters.jsonlines import FilterError
from ..filters.match import FilterList, passes

DEFAULT_ADDRESS = dict((o.name, o.default) for o in config_mod.OPTIONS)["server-address"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _go_bool(text: str) -> bool:
    """A Go boolean flag value (`--stack-traces=false`)."""
    word = text.strip().lower()
    if word in ("1", "t", "true"):
        return True
    if word in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _Append(argparse.Action):
    """A string-slice flag as in tetra: repeatable and comma-separated."""

    def __call__(self, parser, ns, values, option_string=None):
        getattr(ns, self.dest).extend(_csv(values))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("json", "compact"), default="json", help="output format")
    p.add_argument("--color", choices=COLOR_MODES, default="auto", help="colorize compact output")
    p.add_argument("--timestamps", action="store_true", help="include timestamps in compact output")
    p.add_argument("-t", "--tty-encode", default="", metavar="PATH",
                   help="write the data written to this terminal (kprobe events on it); nothing else")
    p.add_argument("--stack-traces", type=_go_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="include stack traces in compact output (default true)")
    p.add_argument("--ima-hash", type=_go_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="include IMA hashes in compact output (default true)")
    for flags, dest, text in [
        (("-f", "--include-fields"), "include_fields", "include only these fields in events"),
        (("-F", "--exclude-fields"), "exclude_fields", "exclude these fields from events"),
        (("-e", "--event-types"), "event_types", f"only events of these types ({', '.join(KIND_BY_NAME)})"),
        (("-n", "--namespace", "--namespaces"), "namespaces", "events of pods in these Kubernetes namespaces"),
        (("--process", "--processes"), "processes", "events of processes whose binary matches these regexes"),
        (("--pod", "--pods"), "pods", "events of pods whose name matches these regexes"),
        (("--container", "--containers"), "containers", "events of containers whose name matches these regexes"),
        (("--policy-names",), "policy_names", "events of these tracing policies"),
        (("--namespace-regex",), "namespace_regex", "events of pods whose namespace matches these regexes"),
        (("--pid", "--pids"), "pids", "events of these process ids"),
    ]:
        p.add_argument(*flags, dest=dest, action=_Append, default=[], metavar="LIST", help=text)
    p.add_argument("--host", action="store_true", help="include host events (processes outside pods)")
    p.add_argument("--server-address", default=None,
                   help=f"the daemon's socket (default: as configured, else {DEFAULT_ADDRESS})")
    p.add_argument("--file", default=None, help="read events from this file of JSON lines")
    p.add_argument("--reconnect", action="store_true", help="keep trying to connect after errors")
    p.add_argument("--reconnect-wait", type=config_mod.parse_duration, default=2.0,
                   metavar="DURATION", help="wait before reconnecting (default 2s)")


def build_filter(args) -> dict:
    """tetra's GetFilter: one allowlist entry from the selection flags."""
    f: dict = {}
    namespaces = list(args.namespaces) + ([""] if args.host else [])
    if args.processes:
        f["binary_regex"] = list(args.processes)
    if namespaces:
        f["namespace"] = namespaces
    if args.pods:
        f["pod_regex"] = list(args.pods)
    if args.containers:
        f["container_name_regex"] = list(args.containers)
    if args.event_types:
        f["event_set"] = list(args.event_types)
    if args.policy_names:
        f["policy_names"] = list(args.policy_names)
    if args.namespace_regex:
        f["namespace_regex"] = list(args.namespace_regex)
    if args.pids:
        try:
            f["pid"] = [int(p) for p in args.pids]
        except ValueError:
            raise FilterError(f"--pids: expected process ids, got {','.join(args.pids)}") from None
    return f


def build_field_filters(args) -> list[dict]:
    out = []
    if args.include_fields:
        out.append({"fields": ",".join(args.include_fields), "action": "INCLUDE"})
    if args.exclude_fields:
        out.append({"fields": ",".join(args.exclude_fields), "action": "EXCLUDE"})
    return out


class Printer:
    def __init__(self, args, out=sys.stdout):
        self.out = out
        self.compact = None
        self.tty = args.tty_encode
        if args.output == "compact":
            self.compact = CompactEncoder(args.color, args.timestamps, out,
                                          stack_traces=args.stack_traces, ima_hash=args.ima_hash)
        self.warned = 0

    def event(self, event: dict | None, line: str) -> None:
        if event is not None and protocol.NOTICE_KEY in event:
            print(f"getevents: {event[protocol.NOTICE_KEY].get('message', '')}", file=sys.stderr, flush=True)
            return
        if self.tty:
            data = tty_bytes(event if event is not None else json.loads(line), self.tty)
            if data:
                self.out.flush()
                self.out.buffer.write(data)
                self.out.buffer.flush()
            return
        if self.compact is None:
            self.out.write(line + "\n")
        else:
            if event is None:
                event = json.loads(line)
            try:
                self.out.write(self.compact.encode_full(event))
            except EncodeError as e:
                # tetra stops here; one odd event should not end a long watch
                print(f"getevents: cannot render event ({e}): {line[:200]}", file=sys.stderr)
        self.out.flush()


def _read_lines(stream, allow: FilterList, field_filters: list, printer: Printer) -> int:
    skipped = 0
    for raw in stream:
        raw = raw.strip()
        if not raw:
            continue
        try:
            event = json.loads(raw)
            if not isinstance(event, dict):
                raise ValueError
        except ValueError:
            skipped += 1          # journal lines that are not events, as tetra skips them
            continue
        if not passes(allow, FilterList([]), event):
            continue
        if field_filters:
            event = apply_all(field_filters, event)
            raw = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        printer.event(event, raw)
    if skipped:
        print(f"getevents: skipped {skipped} lines that are not JSON events", file=sys.stderr)
    return 0


def _stdin_is_data() -> bool:
    try:
        return not stat.S_ISCHR(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def _address(args) -> str:
    if args.server_address:
        return args.server_address
    try:
        return config_mod.load(None).server_address
    except config_mod.ConfigError:
        return DEFAULT_ADDRESS


def _from_daemon(address: str, request: dict, printer: Printer) -> None:
    for line in client.stream_events(address, request):
        parse = printer.compact is not None or printer.tty or protocol.NOTICE_KEY in line
        event = json.loads(line) if parse else None
        printer.event(event, line)


def main(args) -> int:
    try:
        spec = build_filter(args)
        allow = FilterList.from_specs([spec], "filter flags")
        ff_specs = build_field_filters(args)
        field_filters = [FieldFilter.from_spec(s, "field flags") for s in ff_specs]
    except FilterError as e:
        print(f"tetrad getevents: {e}", file=sys.stderr)
        return 2
    # tetra writes UTF-8 whatever the locale; undecodable input bytes are replaced
    sys.stdout.reconfigure(encoding="utf-8")
    sys.stdin.reconfigure(encoding="utf-8", errors="replace")
    printer = Printer(args)
    try:
        if _stdin_is_data() and args.file is None:
            return _read_lines(sys.stdin, allow, field_filters, printer)
        if args.file is not None:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                return _read_lines(f, allow, field_filters, printer)
        address = _address(args)
        request = {"allow_list": [spec], "field_filters": ff_specs}
        while True:
            try:
                _from_daemon(address, request, printer)
                if not args.reconnect:
                    return 0
                err = "the daemon closed the stream"
            except client.ApiError as e:
                if not args.reconnect:
                    print(f"tetrad getevents: {e}", file=sys.stderr)
                    return 1
                err = str(e)
            print(f"getevents: err:{err} retrying in {args.reconnect_wait:g}s", file=sys.stderr, flush=True)
            time.sleep(args.reconnect_wait)
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            # the reader went away (| head): not an error
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            return 0
        print(f"tetrad getevents: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
