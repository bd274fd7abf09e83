"""The compact one-line rendering of events, byte for byte what
`tetra getevents -o compact` prints for the same Tetragon JSON.

`CompactEncoder(color, timestamps).encode(event)` takes a decoded Tetragon
event (`{"process_exec": {...}, "node_name": ..., "time": ...}`) and returns
the line without its newline, or raises `EncodeError` for an event tetra
cannot render either (no process object, unknown kind).

Details kept on purpose because they are tetra's: the emoji and the event
name padded to 7 columns, numbers as Go prints them, Go `strconv.Quote`
quoting of anything with a space or a non-printable character, colour codes
around empty strings too, and the capabilities trailer right-aligned at byte
column 120 (shown, as in tetra, when `cap.effective` has more than 21
entries: tetra tests the list's index, not its value, against CAP_SYS_ADMIN).
"""

from __future__ import annotations

import base64
import os
import re
import sys
from datetime import datetime, timezone

from ..eventtypes import event_kind
from .goquote import maybe_quote
from .syscalls import raw_syscall_enter

COLOR_MODES = ("auto", "always", "never")
CAPS_PAD = 120
CAP_SYS_ADMIN_INDEX = 21

# ANSI codes of fatih/color, the colour library tetra uses.
_CODES = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}

# setns(2) nstype values -> the name tetra prints.
_NS_NAMES = {0: "any", 0x2000000: "cgroup", 0x8000000: "ipc", 0x40000000: "net", 0x20000: "mnt",
             0x20000000: "pid", 0x80: "time", 0x10000000: "user", 0x4000000: "uts"}
_SYSCALL_PREFIXES = ("__x64_", "__arm64_", "__ia32_")
# LSM hooks whose first argument names the file an IMA hash belongs to.
_IMA_BINPRM_HOOKS = ("bprm_check_security", "bprm_committed_creds", "bprm_committing_creds",
                     "bprm_creds_for_exec", "bprm_creds_from_file")
_IMA_FILE_HOOKS = ("file_ioctl", "file_lock", "file_open", "file_post_open", "file_receive", "mmap_file")


class EncodeError(ValueError):
    pass


def color_enabled(mode: str, stream=None) -> bool:
    """`auto` colours only a terminal, unless NO_COLOR is set or TERM=dumb."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


class Colorer:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def paint(self, color: str, text: str) -> str:
        if not self.enabled:
            return text
        return f"\x1b[{_CODES[color]}m{text}\x1b[0m"


def go_number(value) -> int:
    """A protobuf JSON number: 64-bit ones come as strings."""
    if value is None or value == "":
        return 0
    return int(value)


def timestamp(event: dict) -> str:
    """The event's time as RFC 3339 in UTC with nanoseconds (tetra's
    --timestamps); the Unix epoch when the event has none."""
    text = event.get("time") or "1970-01-01T00:00:00Z"
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise EncodeError(f"bad time {text!r}")
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    nanos = (m.group(2) or "").ljust(9, "0")
    return base.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos}Z"


def _arg(body: dict, index: int):
    """Argument `index` of a kprobe-like event (a dict), or None if absent."""
    args = body.get("args") or []
    if index < len(args) and args[index] is not None:
        return args[index]
    return None


def _sub(arg, key: str):
    """A message-typed argument (file_arg, sock_arg, ...) or None."""
    if arg is None:
        return None
    value = arg.get(key)
    return value if isinstance(value, dict) else None


class CompactEncoder:
    def __init__(self, color: str = "never", timestamps: bool = False, stream=None,
                 stack_traces: bool = True, ima_hash: bool = True):
        if color not in COLOR_MODES:
            raise ValueError(f"color must be one of {', '.join(COLOR_MODES)}")
        self.c = Colorer(color_enabled(color, stream))
        self.timestamps = timestamps
        self.stack_traces = stack_traces
        self.ima_hash = ima_hash

    def encode(self, event: dict) -> str:
        """The event's line, without newline."""
        line = self.render(event)
        if self.timestamps:
            line = f"{timestamp(event)} {line}"
        return line

    def encode_full(self, event: dict) -> str:
        """What tetra writes for the event: the line, a newline, then the stack
        traces and IMA hash lines it prints below some events."""
        text = self.encode(event) + "\n"
        if self.stack_traces:
            text += self.stack_trace_lines(event)
        if self.ima_hash:
            text += self.ima_hash_lines(event)
        return text

    def _fprintf(self, color: str, text: str) -> str:
        # fatih/color's Fprintf: the reset comes after the text, newline included
        return self.c.paint(color, text)

    def stack_trace_lines(self, event: dict) -> str:
        body = event.get("process_kprobe")
        if not isinstance(body, dict):
            return ""
        out = []
        kernel = body.get("kernel_stack_trace") or []
        if kernel:
            out.append("Kernel:\n")
            for st in kernel:
                out.append(self._fprintf("green", f"   0x{go_number(st.get('address')):x}:"))
                out.append(self._fprintf("blue", f" {maybe_quote(st.get('symbol', ''))}"))
                out.append("+")
                out.append(self._fprintf("yellow", f"0x{go_number(st.get('offset')):x}\n"))
        user = body.get("user_stack_trace") or []
        if user:
            out.append("User:\n")
            for st in user:
                out.append(self._fprintf("green", f"   0x{go_number(st.get('address')):x}:"))
                if st.get("symbol"):
                    out.append(self._fprintf("blue", f" {maybe_quote(st['symbol'])}"))
                out.append(self._fprintf("yellow", f" ({maybe_quote(st.get('module', ''))}"
                                                   f"+0x{go_number(st.get('offset')):x})\n"))
        return "".join(out)

    def ima_hash_lines(self, event: dict) -> str:
        body = event.get("process_lsm")
        if not isinstance(body, dict) or not body.get("ima_hash"):
            return ""
        function = body.get("function_name", "")
        key = ("linux_binprm_arg" if function in _IMA_BINPRM_HOOKS else
               "file_arg" if function in _IMA_FILE_HOOKS else None)
        path = (_sub(_arg(body, 0), key) or {}).get("path", "") if key else ""
        if not path:
            return ""
        return (self._fprintf("green", f"   {maybe_quote(path)}")
                + self._fprintf("blue", f" {body['ima_hash']}\n"))

    # -- pieces shared by every kind ----------------------------------------------
    def _event(self, emoji: str, name: str, color: str = "blue") -> str:
        return self.c.paint(color, f"{emoji} {name:<7}")

    def _process_info(self, node_name: str, process: dict) -> tuple[str, str]:
        source = self.c.paint("green", maybe_quote(node_name))
        pod = process.get("pod")
        if isinstance(pod, dict):
            source = self.c.paint("green", f"{pod.get('namespace', '')}/{pod.get('name', '')}")
        binary = self.c.paint("magenta", maybe_quote(process.get("binary", "")))
        return f"{source} {binary}", self.c.paint("magenta", _caps(process.get("cap")))

    @staticmethod
    def _trailer(text: str, caps: str) -> str:
        if not caps:
            return text
        padding = max(0, CAPS_PAD - len(text.encode()))
        return f"{text} {caps:>{padding}}" if padding else f"{text} {caps}"

    def _process_of(self, body: dict) -> dict:
        process = body.get("process")
        if not isinstance(process, dict):
            raise EncodeError("process field is not set")
        return process

    # -- per kind ---------------------------------------------------------------
    def render(self, event: dict) -> str:
        kind = event_kind(event)
        if kind is None:
            raise EncodeError("unknown event type")
        body = event[kind] or {}
        node = event.get("node_name", "")
        if kind == "test":
            return "TEST EVENT"
        if kind == "process_throttle":
            return self._throttle(body)
        if kind == "rate_limit_info":
            return self._rate_limit_info(body)
        info, caps = self._process_info(node, self._process_of(body))
        render = getattr(self, "_" + kind)
        return self._trailer(render(body, info), caps)

    def _process_exec(self, body, info):
        args = self.c.paint("cyan", maybe_quote(body["process"].get("arguments", "")))
        return f"{self._event(chr(0x1F680), 'process')} {info} {args}"

    def _process_exit(self, body, info):
        args = self.c.paint("cyan", maybe_quote(body["process"].get("arguments", "")))
        status = body.get("signal") or str(go_number(body.get("status")))
        return f"{self._event(chr(0x1F4A5), 'exit')} {info} {args} {self.c.paint('red', status)}"

    def _process_loader(self, body, info):
        buildid = body.get("buildid")
        build = _bytes_field(buildid).hex() + " " if buildid else ""
        path = self.c.paint("yellow", maybe_quote(body.get("path", "")))
        return f"{self._event(chr(0x1F9EC), 'loader')} {info} {build}{path}"

    def _process_tracepoint(self, body, info):
        subsys, name = body.get("subsys", ""), body.get("event", "")
        if f"{subsys}/{name}" == "raw_syscalls/sys_enter":
            return f"{self._event(chr(0x260E) + ' ', 'syscall')} {info} {raw_syscall_enter(body)}"
        return f"{self._event(chr(0x2049) + chr(0xFE0F), 'tracepoint')} {info} {subsys} {name}"

    def _process_uprobe(self, body, info):
        return (f"{self._event(chr(0x1F575) + chr(0xFE0F), 'uprobe')} {info} "
                f"{maybe_quote(body.get('path', ''))} {maybe_quote(body.get('symbol', ''))}")

    def _process_usdt(self, body, info):
        return (f"{self._event(chr(0x1F575) + chr(0xFE0F), 'usdt')} {info} "
                f"{maybe_quote(body.get('path', ''))} {maybe_quote(body.get('provider', ''))} "
                f"{maybe_quote(body.get('name', ''))}")

    def _process_lsm(self, body, info):
        return f"{self._event(chr(0x1F512), 'LSM')} {info} {body.get('function_name', '')}"

    def _throttle(self, body):
        event = self._event(chr(0x1F9EC), "throttle", "red")
        typ = {"THROTTLE_START": self.c.paint("red", "START"),
               "THROTTLE_STOP": self.c.paint("green", "STOP ")}.get(body.get("type"), "")
        return f"{event} {typ} {maybe_quote(body.get('cgroup', ''))}"

    def _rate_limit_info(self, body):
        # tetra has no rendering for this kind (it stops with "unknown event
        # type"); tetrad shows how many events the daemon's export dropped.
        dropped = go_number(body.get("number_of_dropped_process_events"))
        return f"{self._event(chr(0x1F6A6), 'ratelimit', 'red')} {dropped} events dropped"

    # -- kprobes: tetra renders some functions specially ---------------------
    def _process_kprobe(self, body, info):
        function = body.get("function_name", "")
        sc = function
        for prefix in _SYSCALL_PREFIXES:
            if function.startswith(prefix):
                sc = function[len(prefix):]
                break
        special = _KPROBE_RENDERINGS.get(sc)
        if special is not None:
            return special(self, body, info)
        return f"{self._event(chr(0x2753), 'syscall')} {info} {function}"

    def _cyan_quoted(self, text: str) -> str:
        return self.c.paint("cyan", maybe_quote(text))

    def _file_path_at(self, body, index: int) -> str:
        f = _sub(_arg(body, index), "file_arg")
        return self._cyan_quoted(f.get("path", "")) if f is not None else ""

    def _string_at(self, body, index: int) -> str:
        a = _arg(body, index)
        return self._cyan_quoted(a.get("string_arg", "")) if a is not None else ""

    def _sock_at(self, body, index: int) -> str:
        a = _arg(body, index)
        if a is None:
            return ""
        s = _sub(a, "sock_arg") or {}
        return self.c.paint("cyan", f"tcp {s.get('saddr', '')}:{go_number(s.get('sport'))} -> "
                                    f"{s.get('daddr', '')}:{go_number(s.get('dport'))}")

    def _k_read_write(self, body, info, emoji, name):
        size = _arg(body, 2)
        nbytes = self.c.paint("cyan", f"{go_number(size.get('size_arg'))} bytes") if size is not None else ""
        return f"{self._event(emoji, name)} {info} {self._file_path_at(body, 0)} {nbytes}"

    def _k_write(self, body, info):
        return self._k_read_write(body, info, chr(0x1F4DD), "write")

    def _k_read(self, body, info):
        return self._k_read_write(body, info, chr(0x1F4DA), "read")

    def _k_fd_install(self, body, info):
        return f"{self._event(chr(0x1F4EC), 'open')} {info} {self._file_path_at(body, 1)}"

    def _k_openat(self, body, info):
        return f"{self._event(chr(0x1F4EC) + chr(0xFE0F), 'openat')} {info} {self._string_at(body, 1)}"

    def _k_open(self, body, info):
        return f"{self._event(chr(0x1F4EC) + chr(0xFE0F), 'open')} {info} {self._string_at(body, 1)}"

    def _k_close(self, body, info):
        return f"{self._event(chr(0x1F4EA), 'close')} {info} {self._file_path_at(body, 0)}"

    def _k_mount(self, body, info):
        return (f"{self._event(chr(0x1F4BE), 'mount')} {info} "
                f"{self._string_at(body, 0)} {self._string_at(body, 1)}")

    def _k_pivot_root(self, body, info):
        return (f"{self._event(chr(0x1F4BE), 'pivot_root')} {info} "
                f"{self._string_at(body, 0)} {self._string_at(body, 1)}")

    def _k_setuid(self, body, info):
        a = _arg(body, 0)
        uid = self.c.paint("cyan", str(go_number(a.get("int_arg")))) if a is not None else ""
        return f"{self._event(chr(0x1F511), 'setuid')} {info} {uid}"

    def _k_clock_settime(self, body, info):
        return f"{self._event(chr(0x23F0), 'clock_settime')} {info}"

    def _k_proc_exec_connector(self, body, info):
        return f"{self._event(chr(0x1F527), 'proc_exec_connector')} {info}"

    def _k_setns(self, body, info):
        a = _arg(body, 1)
        ns = _NS_NAMES.get(go_number(a.get("int_arg")), "") if a is not None else ""
        return f"{self._event(chr(0x1F527), 'setns')} {info} {ns}"

    def _k_tcp_connect(self, body, info):
        return f"{self._event(chr(0x1F50C), 'connect')} {info} {self._sock_at(body, 0)}"

    def _k_tcp_close(self, body, info):
        return f"{self._event(chr(0x1F9F9), 'close')} {info} {self._sock_at(body, 0)}"

    def _k_tcp_sendmsg(self, body, info):
        a = _arg(body, 1)
        nbytes = go_number(a.get("int_arg")) if a is not None else 0
        return f"{self._event(chr(0x1F4E4), 'sendmsg')} {info} {self._sock_at(body, 0)} bytes {nbytes}"

    def _k_bpf_check(self, body, info):
        attr = ""
        a = _arg(body, 0)
        if a is not None:
            ba = _sub(a, "bpf_attr_arg") or {}
            attr = self.c.paint("cyan", f"{ba.get('ProgType', '')} {ba.get('ProgName', '')} "
                                        f"instruction count {go_number(ba.get('InsnCnt'))}")
        return f"{self._event(chr(0x1F41D), 'bpf_load')} {info} {attr}"

    def _k_perf_event_alloc(self, body, info):
        attr = ""
        a = _arg(body, 0)
        if a is not None:
            pe = _sub(a, "perf_event_arg") or {}
            attr = self.c.paint("cyan", f"{pe.get('Type', '')} {pe.get('KprobeFunc', '')}")
        return f"{self._event(chr(0x1F41D), 'perf_event_alloc')} {info} {attr}"

    def _k_bpf_map_create(self, body, info):
        attr = ""
        a = _arg(body, 0)
        if a is not None:
            m = _sub(a, "bpf_map_arg") or {}
            attr = self.c.paint("cyan", f"{m.get('MapType', '')} {m.get('MapName', '')} "
                                        f"key size {go_number(m.get('KeySize'))} "
                                        f"value size {go_number(m.get('ValueSize'))} "
                                        f"max entries {go_number(m.get('MaxEntries'))}")
        return f"{self._event(chr(0x1F5FA), 'bpf_map_create')} {info} {attr}"

    def _k_file_permission(self, body, info):
        event = self._event(chr(0x2753), "security_file_permission")
        attr = ""
        a0, a1 = _arg(body, 0), _arg(body, 1)
        if a0 is not None and a1 is not None:
            mask = go_number(a1.get("int_arg"))
            if mask == 0x02:
                event = self._event(chr(0x1F4DD), "write")
            elif mask == 0x04:
                event = self._event(chr(0x1F4DA), "read")
            attr = self._cyan_quoted((_sub(a0, "file_arg") or {}).get("path", ""))
        return f"{event} {info} {attr}"

    def _k_mmap_file(self, body, info):
        event = self._event(chr(0x2753), "security_mmap_file")
        attr = ""
        a0, a1 = _arg(body, 0), _arg(body, 1)
        if a0 is not None and a1 is not None:
            prot = go_number(a1.get("uint_arg"))
            tag = "mmap-" + "".join(c for bit, c in ((1, "r"), (2, "w"), (4, "x")) if prot & bit)
            event = self._event(chr(0x1F4DD), tag)
            attr = self._cyan_quoted((_sub(a0, "file_arg") or {}).get("path", ""))
        return f"{event} {info} {attr}"

    def _k_truncate(self, body, info, name, key):
        event = self._event(chr(0x2753), name)
        attr = ""
        a = _arg(body, 0)
        if a is not None:
            attr = self._cyan_quoted((_sub(a, key) or {}).get("path", ""))
            event = self._event(chr(0x1F4DD), "truncate")
        return f"{event} {info} {attr}"


def tty_bytes(event: dict, tty: str) -> bytes | None:
    """tetra's --tty-encode: the data of a kprobe whose first argument is the
    file `tty` (its second argument's bytes), else None."""
    body = event.get("process_kprobe")
    if not isinstance(body, dict):
        return None
    f = _sub(_arg(body, 0), "file_arg")
    if (f.get("path", "") if f is not None else "") != tty:
        return None
    data = _arg(body, 1)
    raw = data.get("bytes_arg") if data is not None else None
    return _bytes_field(raw) if isinstance(raw, str) and raw else b""


def _bytes_field(text: str) -> bytes:
    """A protobuf JSON `bytes` value: base64, standard or URL-safe, padding optional."""
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_" if ("-" in text or "_" in text) else None)
    except ValueError:
        raise EncodeError(f"bad base64 {text!r}") from None


def _caps(cap) -> str:
    if not isinstance(cap, dict):
        return ""
    return "\U0001F6D1 CAP_SYS_ADMIN" if len(cap.get("effective") or []) > CAP_SYS_ADMIN_INDEX else ""


_E = CompactEncoder
_KPROBE_RENDERINGS = {
    "sys_write": _E._k_write,
    "sys_read": _E._k_read,
    "fd_install": _E._k_fd_install,
    "sys_openat": _E._k_openat,
    "sys_open": _E._k_open,
    "sys_close": _E._k_close,
    "sys_mount": _E._k_mount,
    "sys_setuid": _E._k_setuid,
    "sys_clock_settime": _E._k_clock_settime,
    "sys_pivot_root": _E._k_pivot_root,
    "proc_exec_connector": _E._k_proc_exec_connector,
    "sys_setns": _E._k_setns,
    "tcp_connect": _E._k_tcp_connect,
    "tcp_close": _E._k_tcp_close,
    "tcp_sendmsg": _E._k_tcp_sendmsg,
    "bpf_check": _E._k_bpf_check,
    "security_perf_event_alloc": _E._k_perf_event_alloc,
    "security_bpf_map_alloc": _E._k_bpf_map_create,
    "security_bpf_map_create": _E._k_bpf_map_create,
    "security_file_permission": _E._k_file_permission,
    "security_mmap_file": _E._k_mmap_file,
    "security_path_truncate": lambda self, b, i: self._k_truncate(b, i, "security_path_truncate", "path_arg"),
    "security_file_truncate": lambda self, b, i: self._k_truncate(b, i, "security_file_truncate", "file_arg"),
}
