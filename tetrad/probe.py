"""`tetrad probe`: what this kernel offers, what tetrad chose for each kind
of hook, whether the BTF offsets resolve, and (if a daemon runs) its
counters, including records lost in the kernel."""

from __future__ import annotations

import json
import os

from . import config as config_mod
from . import features as features_mod
from . import offsets
from .btf import Btf, BtfError
from .daemon import status_path


def hook_choices(f) -> dict[str, str]:
    """Which mechanism serves each kind of hook on this kernel."""
    return {
        "process events": "raw tracepoints sched_process_exec/fork/exit"
        if f.raw_tracepoints else "unavailable (no raw tracepoints)",
    }


def collect(btf_path: str, server_address: str | None):
    f = features_mod.detect(btf_path=btf_path)
    out: dict = {"features": f.to_dict(), "hooks": hook_choices(f)}
    try:
        macros = offsets.resolve(Btf.load(btf_path))
        out["offsets"] = {"resolved": len(macros), "error": ""}
    except (OSError, BtfError, offsets.OffsetError) as e:
        out["offsets"] = {"resolved": 0, "error": str(e)}
    cfg = config_mod.load({"server-address": server_address} if server_address else None)
    path = status_path(cfg)
    try:
        with open(path) as fh:
            out["daemon"] = json.load(fh)
        out["daemon"]["status_file"] = path
        if not _alive(out["daemon"].get("pid")):
            out["daemon"]["stale"] = True
    except (OSError, ValueError):
        out["daemon"] = None
    return out, f


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def main(args) -> int:
    info, feats = collect(args.btf, args.server_address)
    if args.output == "json":
        print(json.dumps(info, indent=2))
        return 0
    print("Kernel features")
    for line in feats.summary_lines():
        print("  " + line)
    print("Hooks chosen")
    for kind, choice in info["hooks"].items():
        print(f"  {kind}: {choice}")
    off = info["offsets"]
    print("BTF offsets")
    print(f"  {off['resolved']} members resolved" + (f"; ERROR: {off['error']}" if off["error"] else ""))
    d = info["daemon"]
    print("Daemon")
    if d is None:
        print("  not running (no status file)")
    else:
        state = "stale status file (daemon gone)" if d.get("stale") else f"running, pid {d['pid']}"
        print(f"  {state}, up {d['uptime_s']:.0f}s, started in {d['startup_s']:.2f}s")
        print("  events: " + (", ".join(f"{k} {v}" for k, v in sorted(d["events"].items())) or "none"))
        lost = d.get("lost_in_kernel") or {}
        print("  lost in kernel: " + (", ".join(f"{k} {v}" for k, v in sorted(lost.items())) or "0"))
        for exp in (d.get("exporters") or {}).get("exporters", []):
            print(f"  export to {exp['path']}: {exp['lines_written']} written, "
                  f"{exp['lines_lost']} lost")
        cache = d.get("process_cache", {})
        print(f"  process cache: {cache.get('size', 0)} entries, {cache.get('evictions', 0)} evictions")
    return 0
