"""`tetrad probe`: what this kernel offers, what tetrad chose for each kind
of hook, whether the BTF offsets resolve, and (if a daemon runs) its
counters, including records lost in the kernel."""

from __future__ import annotations

import json
import os

from . import backends
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


def collect(btf_path: str, server_address: str | None, hook_backend: str | None = None):
    f = features_mod.detect(btf_path=btf_path)
    overrides = {"server-address": server_address} if server_address else {}
    if hook_backend:
        overrides["hook-backend"] = hook_backend
    cfg = config_mod.load(overrides or None)
    out: dict = {"features": f.to_dict(), "hooks": hook_choices(f)}
    btf = None
    try:
        btf = Btf.load(btf_path)
        macros = offsets.resolve(btf)
        out["offsets"] = {"resolved": len(macros), "error": ""}
    except (OSError, BtfError, offsets.OffsetError) as e:
        out["offsets"] = {"resolved": 0, "error": str(e)}
    choices = backends.summary(f, force=cfg.hook_backend,
                               has_func=btf.has_func if btf is not None else None)
    out["backends"] = {"hook_backend": cfg.hook_backend,
                       "choices": [c.to_dict() for c in choices]}
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
    info, feats = collect(args.btf, args.server_address, args.hook_backend)
    if args.output == "json":
        print(json.dumps(info, indent=2))
        return 0
    print("Kernel features")
    for line in feats.summary_lines():
        print("  " + line)
    print("Hooks chosen")
    for kind, choice in info["hooks"].items():
        print(f"  {kind}: {choice}")
    print(f"Backends (hook-backend={info['backends']['hook_backend']})")
    for c in info["backends"]["choices"]:
        chosen = f"{c['backend']} {c['target']}" if c["backend"] else "REFUSED"
        print(f"  {c['kind'] + ' ' + c['name']:<36} {chosen}: {c['reason']}")
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
        ct = d.get("containers") or {}
        if ct.get("containerd_address"):
            state = "connected" if ct.get("containerd_connected") else "UNAVAILABLE"
            print(f"  containerd {ct['containerd_address']}: {state}, "
                  f"{ct.get('containers_known', 0)} containers known, "
                  f"{ct.get('containerd_errors', 0)} errors, {ct.get('lookups_late', 0)} late look-ups")
        if "k8s" in ct:
            k = ct["k8s"]
            print(f"  Kubernetes API: {k['pods']} pods of this node, {k['policies']} tracing policies, "
                  f"{k['errors']} errors")
    return 0
