"""`tetrad tracingpolicy list|add FILE|delete NAME|enable NAME|disable NAME|set-mode NAME MODE`,
served by the daemon's policy manager over its socket."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..api import client
from .getevents import _address


def add_arguments(p) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server-address", default=None, help="the daemon's socket")
    common.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the daemon (a policy load compiles BPF first)")
    sub = p.add_subparsers(dest="tp_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", parents=[common], help="list loaded tracing policies")
    ls.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add = sub.add_parser("add", parents=[common], help="load a tracing policy file")
    add.add_argument("file")
    for action in ("delete", "enable", "disable"):
        a = sub.add_parser(action, parents=[common], help=f"{action} a tracing policy")
        a.add_argument("name")
    sm = sub.add_parser("set-mode", parents=[common],
                        help="enforce, or only report what would be enforced (monitor)")
    sm.add_argument("name")
    sm.add_argument("mode", choices=("enforce", "monitor"))


def main(args) -> int:
    action = args.tp_command
    if action == "add":
        payload = {"path": os.path.abspath(args.file)}
    elif action == "list":
        payload = {}
    elif action == "set-mode":
        payload = {"name": args.name, "mode": args.mode}
    else:
        payload = {"name": args.name}
    try:
        result = client.call(_address(args), f"tracingpolicy.{action}", payload, timeout=args.timeout)
    except client.ApiError as e:
        print(f"tetrad tracingpolicy {action}: {e}", file=sys.stderr)
        return 1
    if action == "list":
        if args.output == "json":
            print(json.dumps(result, indent=2))
        else:
            print_policies(result or [])
    elif result:
        print(result if isinstance(result, str) else json.dumps(result))
    return 0


def print_policies(policies: list) -> None:
    """Each policy: name, file[document], state; its error; each hook's backend."""
    if not policies:
        print("no tracing policies")
    for p in policies:
        p = p if isinstance(p, dict) else {"name": str(p)}
        where = p.get("file", "") + (f"[{p['document']}]" if p.get("document") is not None else "")
        mode = "  (monitor mode)" if p.get("mode") == "monitor" else ""
        print(f"{p.get('name') or '-'}  {where}  {p.get('state', '?')}{mode}")
        if p.get("error"):
            print(f"    error: {p['error']}")
        if p.get("scope"):
            print(f"    scope: {p['scope']} ({p.get('scope_cgroups', 0)} cgroups)")
        for h in p.get("hooks", []):
            print(f"    {h['hook']}: {h['backend']} ({', '.join(h['attach'])})")
