#!/usr/bin/env python3
"""Generate tetrad/encoder/syscalls_x86_64.json: x86_64 syscall numbers (from
the kernel's uapi unistd_64.h) and argument prototypes (from the syscall
tracepoints' format files in tracefs), which the compact encoder uses to
render raw_syscalls/sys_enter events.  Run on an x86_64 machine with
linux-libc-dev installed and tracefs mounted."""

import json
import os
import re
import sys

UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
TRACEFS = "/sys/kernel/tracing/events/syscalls"
OUT = os.path.join(os.path.dirname(__file__), "..", "tetrad", "encoder", "syscalls_x86_64.json")


def main() -> int:
    names = {}
    with open(UNISTD) as f:
        for line in f:
            m = re.match(r"#define __NR_(\w+)\s+(\d+)", line)
            if m:
                names[int(m.group(2))] = m.group(1)
    args = {}
    for entry in sorted(os.listdir(TRACEFS)):
        if not entry.startswith("sys_enter_"):
            continue
        fields = []
        with open(os.path.join(TRACEFS, entry, "format")) as f:
            for line in f:
                m = re.match(r"\s*field:([^;]+);", line)
                if not m:
                    continue
                decl = m.group(1).strip()
                typ, _, name = decl.rpartition(" ")
                if name in ("__syscall_nr",) or typ.startswith("unsigned short common") or name.startswith("common_"):
                    continue
                fields.append({"name": name, "type": typ.strip()})
        args[entry[len("sys_enter_"):]] = fields
    with open(OUT, "w") as f:
        json.dump({"names": {str(k): v for k, v in sorted(names.items())}, "args": args}, f,
                  separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"{len(names)} syscall numbers, {len(args)} prototypes -> {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
