"""Rendering of raw_syscalls/sys_enter tracepoint events as tetra does:
`name(type arg=value, ...)`, pointers in hex, from the x86_64 table that
scripts/gen_syscall_table.py generates from the kernel's own descriptions."""

from __future__ import annotations

import functools
import json
import os

DEFAULT_ABI = "x64"


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    with open(os.path.join(os.path.dirname(__file__), "syscalls_x86_64.json")) as f:
        return json.load(f)


def raw_syscall_enter(body: dict) -> str:
    args = body.get("args") or []
    sys_id, abi = -1, DEFAULT_ABI
    first = args[0] if args and args[0] is not None else {}
    if "long_arg" in first:
        sys_id = int(first["long_arg"])
    elif isinstance(first.get("syscall_id"), dict):
        sys_id = int(first["syscall_id"].get("id", 0))
        abi = first["syscall_id"].get("abi", "") or DEFAULT_ABI
    if abi != DEFAULT_ABI:
        return "unknown"   # only the native ABI's table is shipped
    name = _table()["names"].get(str(sys_id))
    if name is None:
        return "unknown"
    proto = _table()["args"].get(name)
    if proto is None:
        return name
    parts = []
    for i, arg in enumerate(proto, start=1):
        typ = arg["type"]
        value, is_ptr = "?", False
        a = args[i] if i < len(args) and args[i] is not None else {}
        if "size_arg" in a:
            v = int(a["size_arg"])
            if typ.endswith("*"):
                is_ptr, value = True, f"0x{v:x}"
            else:
                value = str(v)
        parts.append(f"{typ}{arg['name']}={value}" if is_ptr else f"{typ} {arg['name']}={value}")
    return f"{name}({', '.join(parts)})"
