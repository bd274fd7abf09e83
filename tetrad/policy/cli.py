"""`tetrad tracingpolicy list [-o json]`: the running daemon's policies, each
with its file, state (loaded, disabled, or error with the reason) and the
backend chosen for each hook.  Read from the daemon's status file for now
(the manager's list() is transport-independent)."""

from __future__ import annotations

import json
import sys

from .. import config as config_mod
from ..daemon import status_path


def read_policies(server_address: str | None) -> list[dict] | None:
    cfg = config_mod.load({"server-address": server_address} if server_address else None)
    try:
        with open(status_path(cfg)) as f:
            return json.load(f).get("policies", [])
    except (OSError, ValueError):
        return None


def list_main(args) -> int:
    policies = read_policies(args.server_address)
    if policies is None:
        print("tetrad: no running daemon (no status file)", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(policies, indent=2))
        return 0
    if not policies:
        print("no tracing policies")
        return 0
    for p in policies:
        where = p["file"] + (f"[{p['document']}]" if p.get("document") is not None else "")
        print(f"{p['name'] or '-'}  {where}  {p['state']}")
        if p.get("error"):
            print(f"    error: {p['error']}")
        for h in p.get("hooks", []):
            print(f"    {h['hook']}: {h['backend']} ({', '.join(h['attach'])})")
    return 0
