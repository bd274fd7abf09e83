"""Which parts of a TracingPolicy become cgroup device rules.

A selector that would Override (or Sigkill) opening a device node is decided
by bpf/enforce_cgroup.c before the device is opened, instead of by a signal
after it (on a kernel without BPF LSM or override, the open has happened by
then, and a driver's open can have effects of its own).

The kernel judges devices, not names, so the selector's paths are resolved
to the device numbers of the nodes present when the policy loads:
  Equal "/dev/mem"        -> that node's (type, major, minor), symlinks followed
  Prefix "/dev/sd"        -> every node under /dev whose path starts so
and every path to the same device is then refused: hard links, bind mounts,
a node made later with mknod elsewhere.  Not covered: nodes with other
numbers that appear after the policy loaded (a disk plugged in later) until
the policy is loaded again (a change of its file).

Override asks for the open never to happen, so its selector must name device
nodes only; otherwise it is not a device rule and the policy is refused with
the reason (no other mechanism on such a kernel can refuse an open).
Sigkill asks for the process to die; where its paths are all device nodes
the open is refused too, otherwise the selector stays a kill from the hook.

Hooks understood (Tetragon's names, with or without the syscall prefix), with
the argument that carries the path:
  sys_open (0), sys_openat (1), sys_openat2 (1)            string
  security_file_open (0), fd_install (1)                   file
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .devcgroup import ACC_READ, ACC_WRITE, DeviceRule, device_of
from .network import (SCOPE_SELECTORS, EnforcementError, _binaries, _namespaces, _pids, call_name,
                      enforcing_selectors)
from .sock import ACTION_DENY, ACTION_KILL, ACTION_MONITOR

OPEN_CALLS = {"sys_open": 0, "sys_openat": 1, "sys_openat2": 1,
              "security_file_open": 0, "fd_install": 1}
PATH_TYPES = ("string", "file", "path")
MAX_NODES = 4096          # the `devices` map's size; a prefix naming more is refused
MAX_WALK = 100_000        # entries looked at while resolving one prefix


@dataclass
class DeviceRuleSpec:
    hook_index: int
    selector_index: int
    call: str
    rule: DeviceRule
    kill: bool
    errno: int
    paths: dict                    # (type, major, minor) -> the path it was resolved from


class NotDevices(Exception):
    """The selector is not (only) about device nodes: the reason."""


def is_open_call(name: str) -> bool:
    return call_name(name) in OPEN_CALLS


def device_rules(policy, monitor: bool = False):
    """(rules, reasons): the device rules of `policy`'s enforcing selectors on
    open hooks, and for each enforcing selector that is not one, keyed by
    (hook index, selector index), why not.  EnforcementError for a selector
    about device nodes that asks for more than cgroup BPF can decide."""
    rules, reasons = [], {}
    for h, hook in enumerate(policy.hooks):
        if hook.kind != "kprobe" or not is_open_call(hook.name):
            continue
        for s in enforcing_selectors(hook):
            try:
                rules.append(_rule(hook, h, s, monitor))
            except NotDevices as why:
                reasons[(h, s)] = str(why)
            except EnforcementError as why:
                if _overrides(hook.selectors[s]):
                    raise
                reasons[(h, s)] = str(why)   # Sigkill only: it stays a kill from the hook
    return rules, reasons


def _overrides(selector) -> bool:
    return any(a.get("action") == "Override" for a in selector.get("matchActions") or ())


def _rule(hook, h: int, s: int, monitor: bool) -> DeviceRuleSpec:
    sel = hook.selectors[s]
    where = f"{hook.path}.selectors[{s}]"
    index = OPEN_CALLS[call_name(hook.name)]
    arg_type = next((a.type for a in hook.args if a.index == index), "")
    matches = sel.get("matchArgs") or ()
    if arg_type not in PATH_TYPES or not matches:
        raise NotDevices(f"cgroup BPF can refuse opens of named device nodes only, and this selector "
                         f"names no path (matchArgs on argument {index})")
    found: dict | None = None
    for m, match in enumerate(matches):
        if match.get("index", 0) != index:
            raise NotDevices(f"matchArgs[{m}] is on argument {match.get('index', 0)}, not the path "
                             f"(argument {index}): cgroup BPF refuses devices, whatever the other arguments")
        nodes = _resolve(match.get("operator", ""), [str(v) for v in match.get("values") or ()])
        found = nodes if found is None else {d: p for d, p in found.items() if d in nodes}
    if not found:
        raise NotDevices("its paths name no device node present now (cgroup BPF refuses devices, "
                         "which are resolved when the policy loads)")
    if len(found) > MAX_NODES:
        raise EnforcementError(f"{where}.matchArgs", f"names {len(found)} device nodes; at most "
                               f"{MAX_NODES} can be enforced")
    rule = DeviceRule(action=ACTION_MONITOR if monitor else ACTION_DENY, access=ACC_READ | ACC_WRITE,
                      devices=set(found), label=f"{hook.name} selector {s}")
    for key in sel:
        if key not in SCOPE_SELECTORS:
            raise EnforcementError(f"{where}.{key}", "cannot be decided before the open by cgroup "
                                   "BPF (this kernel has no BPF LSM or override); remove it or the "
                                   "enforcing action")
    for m, match in enumerate(sel.get("matchBinaries") or ()):
        _binaries(rule, match, f"{where}.matchBinaries[{m}]")
    for m, match in enumerate(sel.get("matchPIDs") or ()):
        _pids(rule, match, f"{where}.matchPIDs[{m}]")
    _namespaces(rule, sel.get("matchNamespaces") or (), f"{where}.matchNamespaces")
    kill, err = False, 1
    for act in sel.get("matchActions") or ():
        if act.get("action") == "Sigkill":
            kill = True
        elif act.get("action") == "Override":
            err = abs(int(act.get("argError", -1)))
    if kill and not monitor:
        rule.action = ACTION_KILL
    return DeviceRuleSpec(h, s, hook.name, rule, kill, err, found)


def _resolve(op: str, values: list[str]) -> dict:
    """{device: path} of the nodes `op values` names; NotDevices when it also
    names something that is not a device node (which cgroup BPF cannot refuse)."""
    out: dict = {}
    if op == "Equal":
        for v in values:
            try:
                st = os.stat(v)
            except OSError as e:
                raise NotDevices(f"{v!r} cannot be resolved to a device node ({e.strerror})") from None
            dev = device_of(st.st_mode, st.st_rdev)
            if dev is None:
                raise NotDevices(f"{v!r} is not a device node")
            out.setdefault(dev, v)
        return out
    if op == "Prefix":
        for v in values:
            for path in _under(v):
                try:
                    st = os.stat(path)
                except OSError:
                    continue          # a dangling symlink: nothing to open
                dev = device_of(st.st_mode, st.st_rdev)
                if dev is None:
                    raise NotDevices(f"Prefix {v!r} also names {path!r}, which is not a device node")
                out.setdefault(dev, path)
        return out
    raise NotDevices(f"{op} cannot be resolved to device nodes (Equal and Prefix can)")


def _under(prefix: str):
    """Paths present that start with `prefix` (a directory is descended into
    only where its paths can still match)."""
    top = prefix if prefix.endswith("/") else os.path.dirname(prefix) + "/"
    if not os.path.isdir(top):
        return
    seen = 0
    for dirpath, dirnames, filenames in os.walk(top):
        names = [os.path.join(dirpath, n) for n in dirnames + filenames]
        seen += len(names)
        if seen > MAX_WALK:
            raise NotDevices(f"Prefix {prefix!r} names more than {MAX_WALK} paths")
        for path in names:
            if path.startswith(prefix):
                yield path
        dirnames[:] = [d for d in dirnames if _may_match(os.path.join(dirpath, d), prefix)]


def _may_match(directory: str, prefix: str) -> bool:
    d = directory + "/"
    return d.startswith(prefix) or prefix.startswith(d)
