"""`tetrad status`: the running daemon's state, asked over its socket."""

from __future__ import annotations

import json
import sys

from ..api import client
from .getevents import _address


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def render(s: dict) -> list[str]:
    lines = [f"tetrad {s.get('version', '?')}, pid {s['pid']}, up {s['uptime_s']:.0f}s "
             f"(started in {s['startup_s']:.2f}s), node {s.get('node_name', '?')}"]
    feats = s.get("features", {})
    yes = sorted(k for k, v in feats.items() if v is True)
    no = sorted(k for k, v in feats.items() if v is False)
    lines.append(f"kernel: {feats.get('kernel_release', '?')}; has {', '.join(yes) or 'nothing'}"
                 + (f"; lacks {', '.join(no)}" if no else ""))
    for kind, choice in (s.get("hooks") or {}).items():
        lines.append(f"hook for {kind}: {choice}")
    policies = s.get("policies")
    if policies is None:
        lines.append("policies: no policy engine in this daemon")
    else:
        lines.append(f"policies: {len(policies)}")
        for p in policies:
            lines.append(f"  {p.get('name', '?')}: {p.get('state', '?')}"
                         + (f" ({p['error']})" if p.get("error") else ""))
    lines.append(f"events total: {_counts(s.get('events', {}))}")
    lines.append(f"events/s (last {s.get('rate_window_s', 0):.0f}s): {_counts(s.get('events_per_s', {}))}")
    lines.append(f"lost in kernel: {_counts(s.get('lost_in_kernel', {}))}")
    export = s.get("export", {})
    outputs = (s.get("exporters") or {}).get("exporters", [])
    written = sum(o.get("lines_written", 0) for o in outputs)
    lost = sum(o.get("lines_lost", 0) for o in outputs)
    lines.append(f"export: {written} written ({lost} lost), {export.get('filtered_out', 0)} filtered out, "
                 f"{export.get('rate_limit_dropped', 0)} dropped by the rate limit")
    cache = s.get("process_cache", {})
    lines.append(f"process cache: {_counts(cache)}")
    api = s.get("api", {})
    lines.append(f"API clients: {api.get('clients', 0)} ({api.get('subscribers', 0)} streaming), "
                 f"{api.get('dropped_for_slow_clients', 0)} events dropped for slow clients")
    containerd = s.get("containerd")
    lines.append(f"containerd: {containerd if containerd else 'not tracked by this daemon'}")
    return lines


def main(args) -> int:
    try:
        s = client.call(_address(args), "status")
    except client.ApiError as e:
        print(f"tetrad status: {e}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(s, indent=2))
    else:
        print("\n".join(render(s)))
    return 0
