"""`tetrad tracingpolicy list|add FILE|delete NAME|enable NAME|disable NAME`,
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
    sub = p.add_subparsers(dest="tp_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", parents=[common], help="list loaded tracing policies")
    ls.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add = sub.add_parser("add", parents=[common], help="load a tracing policy file")
    add.add_argument("file")
    for action in ("delete", "enable", "disable"):
        a = sub.add_parser(action, parents=[common], help=f"{action} a tracing policy")
        a.add_argument("name")


def main(args) -> int:
    action = args.tp_command
    if action == "add":
        payload = {"path": os.path.abspath(args.file)}
    elif action == "list":
        payload = {}
    else:
        payload = {"name": args.name}
    try:
        result = client.call(_address(args), f"tracingpolicy.{action}", payload)
    except client.ApiError as e:
        print(f"tetrad tracingpolicy {action}: {e}", file=sys.stderr)
        return 1
    if action == "list":
        if args.output == "json":
            print(json.dumps(result, indent=2))
        else:
            for p in result or []:
                p = p if isinstance(p, dict) else {"name": str(p)}
                print(f"{p.get('name', '?'):<32} {p.get('state', '?'):<10} {p.get('error', '')}".rstrip())
    elif result:
        print(result if isinstance(result, str) else json.dumps(result))
    return 0
