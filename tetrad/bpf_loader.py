"""Compiling tetrad's BPF C (bpf/*.c) with BCC.

The C sources live in bpf/ at the top of a source checkout and under
<prefix>/share/tetrad/bpf once installed; TETRAD_BPF_DIR overrides both.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from pathlib import Path

from . import kheaders

log = logging.getLogger("tetrad.bpf")


class BpfLoadError(Exception):
    pass


def bpf_dir() -> Path:
    candidates = []
    if os.environ.get("TETRAD_BPF_DIR"):
        candidates.append(Path(os.environ["TETRAD_BPF_DIR"]))
    candidates += [
        Path(__file__).resolve().parent.parent / "bpf",
        Path(sys.prefix) / "share" / "tetrad" / "bpf",
        Path("/usr/share/tetrad/bpf"),
        Path("/usr/local/share/tetrad/bpf"),
    ]
    for c in candidates:
        if (c / "common.h").is_file():
            return c
    raise BpfLoadError("BPF sources not found; looked in " + ", ".join(map(str, candidates)))


def compile_program(source: str, macros: dict[str, int | str], *, text: str | None = None,
                    autoattach: bool = True):
    """Compile and load bpf/<source> (or `text`, with bpf/ on the include path).

    BCC attaches RAW_TRACEPOINT_PROBE/TRACEPOINT_PROBE/KFUNC_PROBE/LSM_PROBE functions as it
    loads; with autoattach=False nothing is attached, so that the caller can attach only the
    backends tetrad/backends.py chose (a kernel refusing one must not fail the others).
    """
    from bcc import BPF  # imported late: `tetrad version` must work without BCC

    loader = BPF
    if not autoattach:
        class ManualAttachBPF(BPF):
            def _trace_autoload(self):
                pass
        loader = ManualAttachBPF

    kheaders.ensure()
    directory = bpf_dir()
    flags = [f"-I{directory}", "-Wno-unused-function"]
    flags += [f"-D{k}={v}" for k, v in sorted(macros.items())]
    started = time.monotonic()
    try:
        if text is None:
            bpf = loader(src_file=str(directory / source).encode(), cflags=flags)
        else:
            bpf = loader(text=text.encode(), cflags=flags)
    except Exception as e:  # BCC raises bare Exception on compile/load failure
        raise BpfLoadError(f"{source}: {e}") from e
    log.debug("compiled %s in %.2fs", source, time.monotonic() - started)
    release_compiler_memory()
    return bpf


def release_compiler_memory() -> None:
    """clang runs inside this process and leaves ~50 MB of freed heap behind;
    hand it back to the kernel so the daemon's steady RSS stays small."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass   # not glibc: nothing to trim
