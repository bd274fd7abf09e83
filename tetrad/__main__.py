"""The `tetrad` command: one entry point, one subcommand per task.

    tetrad run        the daemon (tetrad/daemon.py)
    tetrad probe      what the kernel offers and what tetrad chose (tetrad/probe.py)
    tetrad getevents  print events like tetra getevents (tetrad/cli/getevents.py)
    tetrad status     the running daemon's state over its socket (tetrad/cli/status.py)
    tetrad tracingpolicy list|add|delete|enable|disable (tetrad/cli/tracingpolicy.py)
    tetrad version
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from . import config as config_mod
from . import logs


def _cmd_run(args) -> int:
    from . import daemon
    cfg = config_mod.load(args)
    logs.setup(cfg.log_level, cfg.log_format)
    return daemon.run(cfg)


def _cmd_probe(args) -> int:
    from . import probe
    return probe.main(args)


def _cmd_getevents(args) -> int:
    from .cli import getevents
    return getevents.main(args)


def _cmd_status(args) -> int:
    from .cli import status
    return status.main(args)


def _cmd_tracingpolicy(args) -> int:
    from .cli import tracingpolicy
    return tracingpolicy.main(args)


def _cmd_version(args) -> int:
    print(f"tetrad {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tetrad", description="eBPF security observability and enforcement")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the daemon")
    config_mod.add_arguments(run)
    run.set_defaults(func=_cmd_run)

    probe = sub.add_parser("probe", help="show kernel features, the hooks tetrad chose, and the daemon's counters")
    probe.add_argument("-o", "--output", choices=("text", "json"), default="text")
    probe.add_argument("--btf", default="/sys/kernel/btf/vmlinux")
    probe.add_argument("--server-address", default=None,
                       help="the daemon whose counters to show (default: as configured)")
    probe.add_argument("--hook-backend", default=None,
                       choices=("auto", "kprobe", "fentry", "tracepoint"),
                       help="show the choices as if forced (default: as configured)")
    probe.set_defaults(func=_cmd_probe)

    from .cli import getevents, tracingpolicy
    ge = sub.add_parser("getevents", help="print events (from the daemon, stdin or a file)")
    getevents.add_arguments(ge)
    ge.set_defaults(func=_cmd_getevents)

    st = sub.add_parser("status", help="show the running daemon's state")
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    st.add_argument("--server-address", default=None, help="the daemon's socket")
    st.set_defaults(func=_cmd_status)

    tp = sub.add_parser("tracingpolicy", help="manage the running daemon's tracing policies")
    tracingpolicy.add_arguments(tp)
    tp.set_defaults(func=_cmd_tracingpolicy)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except config_mod.ConfigError as e:
        print(f"tetrad: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
