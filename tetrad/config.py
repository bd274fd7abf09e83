"""Layered configuration for ``tetrad run``.

Option names follow Tetragon's flags so existing settings carry over.  Each
option is looked up in these layers, later ones overriding earlier ones:

1. built-in defaults (``OPTIONS``);
2. ``$TETRAD_CONFIG_DIR/tetrad.yaml``: a YAML mapping of option name -> value;
3. ``$TETRAD_CONFIG_DIR/tetrad.conf.d/``: Tetragon-style drop-ins, one file
   per option, named after it and holding its value (trailing whitespace is
   stripped; files are applied in sorted order; dotfiles and editor backups
   ending in ``~`` are skipped);
4. ``TETRAD_*`` environment variables: the option name upper-cased with ``-``
   turned into ``_``, e.g. ``TETRAD_EXPORT_FILENAME``;
5. command-line flags ``--<name>`` (see ``add_arguments``).

``TETRAD_CONFIG_DIR`` defaults to ``/etc/tetrad``; missing files and
directories are skipped.  Any other ``TETRAD_*`` variable that is not an
option is rejected, so a typo cannot silently be ignored, except for the
variables in ``NON_OPTION_ENV`` which other parts of tetrad read directly.

Every layer hands over text (or, from YAML, a list of texts); each option type
has one parser, so ``8M`` means the same in every layer.  An unknown option or
a bad value raises ``ConfigError`` naming exactly where it came from.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import socket
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import yaml

DEFAULT_CONFIG_DIR = "/etc/tetrad"

# TETRAD_* variables that are not options but are read elsewhere in tetrad:
# TETRAD_BPF_DIR (where the BPF sources live), TETRAD_CONFIG_DIR (above) and
# TETRAD_JOURNAL_SOCKET (journald's socket, for tests).
NON_OPTION_ENV = frozenset({"TETRAD_BPF_DIR", "TETRAD_CONFIG_DIR", "TETRAD_JOURNAL_SOCKET"})

_ENV_PREFIX = "TETRAD_"


class ConfigError(Exception):
    """An invalid configuration; the message starts with where it came from."""


def _show(raw: Any) -> str:
    """Quote a rejected value the way the user wrote it."""
    return json.dumps(raw, ensure_ascii=False) if isinstance(raw, str) else repr(raw)


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6,
    "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration ("1h30m", "10s", "500ms", "0") into seconds.

    Raises ValueError for anything else, including negative durations.
    """
    s = text.strip()
    if s == "0":  # the only unit-less duration Go accepts
        return 0.0
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"expected a duration such as 30s, 1h30m or 500ms, got {_show(text)}")
    return total


# --- one parser per option type: raw value (text, or a native value when
# passed programmatically) -> normalised value; ValueError on bad input.

def _parse_str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {_show(raw)}")
    return raw


def _parse_int(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
        return int(raw)
    raise ValueError(f"expected an integer, got {_show(raw)}")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {_show(raw)}")


def _parse_float(raw: Any) -> float:
    value: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            pass
    if value is None or not math.isfinite(value):
        raise ValueError(f"expected a number, got {_show(raw)}")
    return value


# Suffixes are binary multiples whether or not an "i" is written, as with
# Tetragon's --rb-size: 8M == 8Mi == 8MiB == 8 * 1024 * 1024.
_SIZE = re.compile(r"(\d+)\s*(?:([kmgt])i?b?)?", re.IGNORECASE)


def _parse_size(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    m = _SIZE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if m is None:
        raise ValueError(
            f"expected a size in bytes such as 65536, 64K, 8M or 1Gi, got {_show(raw)}")
    exponent = " kmgt".index(m.group(2).lower()) if m.group(2) else 0
    return int(m.group(1)) * 1024**exponent


def _parse_octal(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        mode = raw  # already a number, e.g. 0o600 == 384 from Python
    elif isinstance(raw, str) and re.fullmatch(r"(0[oO])?[0-7]+", raw.strip()):
        mode = int(raw.strip(), 8)  # text is always octal, like chmod's
    else:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"expected an octal file mode such as 600 or 0o640, got {_show(raw)}")
    return mode


def _parse_list(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        items = raw.split(",")
    elif isinstance(raw, (list, tuple)) and all(isinstance(i, str) for i in raw):
        items = list(raw)
    else:
        raise ValueError(f"expected a comma-separated list or a list of strings, got {_show(raw)}")
    return tuple(i.strip() for i in items if i.strip())


def _parse_duration_text(raw: Any) -> str:
    # Kept as written (so status output shows "1h"); call parse_duration()
    # on it for seconds.  Validating here reports mistakes at start-up.
    parse_duration(_parse_str(raw))
    return raw.strip()


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "str": _parse_str,
    "int": _parse_int,
    "bool": _parse_bool,
    "float": _parse_float,
    "size": _parse_size,
    "octal": _parse_octal,
    "list": _parse_list,
    "duration": _parse_duration_text,
}


@dataclass(frozen=True)
class Option:
    """One configuration option.

    ``type`` is one of "str", "int", "bool", "float", "size" (bytes; accepts
    "8M", "1Gi", ...), "octal" (file mode), "list" (tuple of strings) or
    "duration" (a string checked by ``parse_duration``).  ``choices`` limits a
    str option (matched case-insensitively); ``minimum`` bounds an int option.
    """

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: int | None = None

    def __post_init__(self) -> None:
        if self.type not in _PARSERS:
            raise ValueError(f"option {self.name}: unknown type {self.type!r}")
        if self.parse(self.default) != self.default:
            raise ValueError(f"option {self.name}: default is not in normal form")

    @property
    def attr(self) -> str:
        """Attribute name on Config and argparse dest: ``export_filename``."""
        return self.name.replace("-", "_")

    @property
    def env_var(self) -> str:
        """Environment variable name: ``TETRAD_EXPORT_FILENAME``."""
        return _ENV_PREFIX + self.attr.upper()

    def parse(self, raw: Any) -> Any:
        """Return ``raw`` converted to this option's type; ValueError if bad."""
        value = _PARSERS[self.type](raw)
        if self.choices is not None:
            matches = [c for c in self.choices if c == value.strip().lower()]
            if not matches:
                raise ValueError(
                    f"invalid choice {_show(raw)} (choose from {', '.join(self.choices)})")
            value = matches[0]
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum}, got {_show(raw)}")
        return value


OPTIONS: list[Option] = [
    Option("export-filename", "str", "",
           "write events as JSON lines to this file (empty: no file export)"),
    Option("export-file-max-size-mb", "int", 10,
           "rotate the export file when it reaches this many MiB", minimum=1),
    Option("export-file-max-backups", "int", 5,
           "number of rotated export files to keep", minimum=0),
    Option("export-file-compress", "bool", False,
           "gzip rotated export files"),
    Option("export-file-perm", "octal", 0o600,
           "permission bits of the export file"),
    Option("export-file-rotation-interval", "duration", "0s",
           "also rotate the export file this often, e.g. 1h (0s: by size only)"),
    Option("export-stdout", "bool", False,
           "write events as JSON lines to standard output"),
    Option("tracing-policy-dir", "str", "/etc/tetrad/policies",
           "directory of tracing policies loaded at start-up"),
    Option("tracing-policy", "str", "",
           "one extra tracing policy file loaded at start-up"),
    Option("hook-backend", "str", "auto",
           "mechanism for kprobes: hooks: auto (kprobe, else fentry, else a tracepoint "
           "equivalent; see tetrad probe), or force kprobe, fentry or tracepoint",
           choices=("auto", "kprobe", "fentry", "tracepoint")),
    Option("rb-size", "size", 0,
           "ring buffer size per CPU, e.g. 64K or 8M (0: automatic, 2 MiB per CPU); "
           "tetrad has one BPF ring buffer of this times the CPU count, rounded up to a power of two"),
    Option("rb-size-total", "size", 0,
           "ring buffer size across all CPUs (0: automatic); excludes --rb-size"),
    Option("process-cache-size", "int", 65536,
           "maximum number of entries in the process cache", minimum=1),
    Option("procfs", "str", "/proc",
           "location of the proc filesystem (the host's when in a container)"),
    Option("log-level", "str", "info",
           "log verbosity", choices=("debug", "info", "warn", "error")),
    Option("log-format", "str", "text",
           "log output format", choices=("text", "json")),
    Option("server-address", "str", "unix:///run/tetrad/tetrad.sock",
           "listen address of the API server"),
    Option("api-client-queue", "int", 8192,
           "events queued for each getevents client before it loses events "
           "(a client that falls behind never slows the daemon)", minimum=1),
    Option("export-allowlist", "str", "",
           "JSON filters; only matching events are exported"),
    Option("export-denylist", "str", "",
           "JSON filters; matching events are not exported"),
    Option("field-filters", "str", "",
           "JSON filters selecting which event fields are exported"),
    Option("redaction-filters", "str", "",
           "JSON filters of values to redact from exported events"),
    Option("export-rate-limit", "int", -1,
           "maximum events exported per minute (-1: unlimited)", minimum=-1),
    Option("export-rate-limit-interval", "duration", "1m",
           "the window of --export-rate-limit and how often rate_limit_info events "
           "report what it dropped (tetrad only; Tetragon's is fixed at 1m)"),
    Option("metrics-server", "str", "",
           "address to serve Prometheus metrics on, e.g. :2112 (empty: off)"),
    Option("enable-k8s-api", "bool", False,
           "read pod metadata from the Kubernetes API"),
    Option("kubeconfig", "str", "",
           "kubeconfig file for the Kubernetes API (empty: in-cluster)"),
    Option("containerd-address", "str", "/run/containerd/containerd.sock",
           "containerd socket used to look up container metadata"),
    Option("node-name", "str", "",
           "node name put in events (empty: $NODE_NAME or the host name)"),
    Option("enable-journal", "bool", True,
           "write each event to the systemd journal as a structured entry"),
    Option("enable-process-cred", "bool", True,
           "include process_credentials (ids, capabilities) in process objects"),
    Option("enable-process-ns", "bool", True,
           "include ns (namespace inodes) in process objects"),
    Option("btf", "str", "/sys/kernel/btf/vmlinux",
           "BTF file describing the running kernel"),
    Option("cgroup-root", "str", "",
           "cgroup v2 mount point (empty: auto-detect)"),
    Option("verbose", "int", 0,
           "eBPF verifier log on load failure (0: none, 1: truncated, 2: full)", minimum=0),
]

_BY_NAME = {o.name: o for o in OPTIONS}
_BY_ATTR = {o.attr: o for o in OPTIONS}
_BY_ENV = {o.env_var: o for o in OPTIONS}


class Config:
    """The merged, immutable configuration.

    Options read as attributes with underscores (``cfg.export_filename``) or
    by flag name (``cfg.get("export-filename")``).
    """

    __slots__ = ("_values", "_sources")

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))
        object.__setattr__(self, "_sources", MappingProxyType(dict(sources)))

    def __getattr__(self, attr: str) -> Any:
        opt = _BY_ATTR.get(attr)
        if opt is None:
            raise AttributeError(f"no configuration option {attr!r}")
        return self._values[opt.name]

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError("Config is immutable")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError("Config is immutable")

    def get(self, name: str) -> Any:
        """Value of the option with flag name ``name``; KeyError if unknown."""
        return self._values[name]

    def source(self, name: str) -> str:
        """Where the value came from: "default", a file path,
        "environment TETRAD_X" or "command line"."""
        return self._sources[name]

    def as_dict(self) -> dict[str, Any]:
        """Flag name -> value, JSON-serialisable, in ``OPTIONS`` order."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._values.items()}

    def __repr__(self) -> str:
        changed = (f"{k}={v!r}" for k, v in self._values.items() if self._sources[k] != "default")
        return f"Config({', '.join(changed)})"


def _quoted_name(opt: Option) -> str:
    return f'"{opt.name}"'


def _unknown(name: str, where: str,
             spell: Callable[[Option], str] = _quoted_name) -> ConfigError:
    """The error for an unknown option, suggesting a close match spelled the
    way the layer spells options."""
    close = difflib.get_close_matches(name, _BY_NAME, n=1)
    hint = f" (did you mean {spell(_BY_NAME[close[0]])}?)" if close else ""
    return ConfigError(f'{where}: unknown option "{name}"{hint}')


def _option(name: str, where: str) -> Option:
    opt = _BY_NAME.get(name)
    if opt is None:
        raise _unknown(name, where)
    return opt


# A setting read from some layer: (option, raw value, where for error
# messages, source label for Config.source()).
_Setting = tuple[Option, Any, str, str]


def _yaml_raw(node: yaml.Node) -> Any:
    """A YAML value as written: scalars stay text (so `perm: 600` is octal 600
    and `node-name: no` is "no"), sequences become lists."""
    if isinstance(node, yaml.ScalarNode):
        return "" if node.tag == "tag:yaml.org,2002:null" else node.value
    if isinstance(node, yaml.SequenceNode):
        return [_yaml_raw(item) for item in node.value]
    return {_yaml_raw(k): _yaml_raw(v) for k, v in node.value}


def _read_yaml(path: str) -> Iterator[_Setting]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    # Compose rather than load: nodes keep the text as written and line marks.
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if root is None:  # empty file
        return
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else _show(root.value)
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {kind}")
    first_line: dict[str, int] = {}
    for key_node, value_node in root.value:
        key = str(_yaml_raw(key_node))
        line = key_node.start_mark.line + 1
        if key in first_line:
            raise ConfigError(
                f'{path}: option "{key}" given twice (lines {first_line[key]} and {line})')
        first_line[key] = line
        yield _option(key, path), _yaml_raw(value_node), f"{path}: {key}", path


def _read_dropins(directory: str) -> Iterator[_Setting]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"{directory}: cannot read: {e}") from None
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(".") or name.endswith("~") or not os.path.isfile(path):
            continue
        opt = _option(name, path)
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().rstrip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from None
        yield opt, value, path, path


def _read_env(env: Mapping[str, str]) -> Iterator[_Setting]:
    for var in sorted(env):
        if not var.startswith(_ENV_PREFIX) or var in NON_OPTION_ENV:
            continue
        where = f"environment {var}"
        opt = _BY_ENV.get(var)
        if opt is None:
            name = var[len(_ENV_PREFIX):].lower().replace("_", "-")
            raise _unknown(name, where, spell=lambda o: o.env_var)
        yield opt, env[var], where, where


def _read_cli(cli_args: Mapping[str, Any] | argparse.Namespace) -> Iterator[_Setting]:
    if isinstance(cli_args, argparse.Namespace):
        # A Namespace also holds the rest of the command line; take only options.
        items = [(_BY_ATTR[k].name, v) for k, v in vars(cli_args).items() if k in _BY_ATTR]
    else:
        items = [(k.replace("_", "-"), v) for k, v in cli_args.items()]
    for name, value in items:
        if value is not None:  # None means "not given" for parsers using default=None
            where = f"command line --{name}"
            yield _option(name, where), value, where, "command line"


def load(
    cli_args: Mapping[str, Any] | argparse.Namespace | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    dropin_dir: str | None = None,
) -> Config:
    """Merge all configuration layers into a Config; ConfigError if invalid.

    ``cli_args`` is the Namespace from a parser set up with ``add_arguments``
    (other attributes in it are ignored) or a dict keyed by option name, with
    dashes or underscores (any unknown key is an error).  ``env`` defaults to
    ``os.environ``; ``config_file`` and ``dropin_dir`` default to
    ``tetrad.yaml`` and ``tetrad.conf.d`` in ``$TETRAD_CONFIG_DIR``.
    """
    env = os.environ if env is None else env
    config_dir = env.get("TETRAD_CONFIG_DIR") or DEFAULT_CONFIG_DIR
    if config_file is None:
        config_file = os.path.join(config_dir, "tetrad.yaml")
    if dropin_dir is None:
        dropin_dir = os.path.join(config_dir, "tetrad.conf.d")

    values = {o.name: o.default for o in OPTIONS}
    sources = dict.fromkeys(values, "default")
    layers = [_read_yaml(config_file), _read_dropins(dropin_dir), _read_env(env)]
    if cli_args is not None:
        layers.append(_read_cli(cli_args))
    for layer in layers:
        for opt, raw, where, source in layer:
            try:
                values[opt.name] = opt.parse(raw)
            except ValueError as e:
                raise ConfigError(f"{where}: {e}") from None
            sources[opt.name] = source

    # Tetragon refuses this combination too: the two sizes contradict each other.
    if values["rb-size"] and values["rb-size-total"]:
        raise ConfigError(
            f"rb-size ({sources['rb-size']}) and rb-size-total "
            f"({sources['rb-size-total']}) cannot both be set")
    return Config(values, sources)


def format_default(opt: Option) -> str:
    value = opt.default
    if opt.type == "bool":
        return "true" if value else "false"
    if opt.type == "octal":
        return f"0{value:o}"
    if opt.type == "list":
        return ",".join(value) or '""'
    return str(value) if value != "" else '""'


_METAVARS = {
    "str": "STRING", "int": "N", "bool": "BOOL", "float": "NUMBER",
    "size": "SIZE", "octal": "MODE", "list": "LIST", "duration": "DURATION",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--<name>`` for every option to ``parser`` (or an argument group).

    No argparse defaults are set, so the Namespace only holds flags actually
    given and they override the lower layers alone.  Values stay text and are
    checked by ``load`` so errors read the same as for the other layers.
    Booleans work like Go flags: ``--export-stdout`` alone means true and
    ``--export-stdout=false`` turns it off.
    """
    for opt in OPTIONS:
        metavar = "{" + ",".join(opt.choices) + "}" if opt.choices else _METAVARS[opt.type]
        kwargs: dict[str, Any] = {
            "dest": opt.attr,
            "default": argparse.SUPPRESS,
            "metavar": metavar,
            # argparse %-formats help strings.
            "help": f"{opt.help} (default: {format_default(opt)})".replace("%", "%%"),
        }
        if opt.type == "bool":
            kwargs.update(nargs="?", const="true")
        parser.add_argument(f"--{opt.name}", **kwargs)


def node_name(cfg: Config, env: Mapping[str, str] | None = None) -> str:
    """The node name for events: --node-name, else $NODE_NAME (the variable
    Tetragon uses), else the host name."""
    env = os.environ if env is None else env
    return cfg.node_name or env.get("NODE_NAME") or socket.gethostname()
