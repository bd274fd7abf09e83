"""The set of loaded policies, kept in step with the policy directory.

Transport-independent API (the daemon's status file today, its socket API
later): `list()`, `add(path)`, `delete(name)`, `enable(name)`,
`disable(name)`, `reload()`.  The directory is watched with inotify and
re-read on SIGHUP (`reload()`); a file whose content did not change keeps
its programs attached, so the events of unchanged policies never stop.  A
replaced policy's new programs are attached before the old ones are closed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..enforce import network as enforce_net
from ..enforce.events import MONITOR_NOTE, verdict_event
from ..enforce.sock import ACTION_DENY, SockEnforcer
from . import hooks as hooks_mod
from . import loader
from .events import PolicyEvents, decode
from .inotify import DirectoryWatcher
from .loader import PolicyError
from .model import Policy
from .program import PolicyProgram, ProgramError

log = logging.getLogger("tetrad.policy")

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

SETTLE_S = 0.15   # wait for a burst of inotify events (an editor's save) to end
MODE_OPTION = "policy-mode"
MODES = ("enforce", "monitor")
ENFORCING_ACTIONS = ("Sigkill", "Signal", "Override")


def policy_mode(policy: Policy) -> str:
    for opt in policy.spec.get("options") or ():
        if opt.get("name") == MODE_OPTION:
            value = str(opt.get("value", "enforce")).lower()
            if value not in MODES:
                raise hooks_mod.PlanError(f"option {MODE_OPTION}: {value!r} is not enforce or monitor")
            return value
    return "enforce"


def _monitor_only(policy: Policy) -> tuple[Policy, dict]:
    """Monitor mode for the tracing program: Sigkill/Signal/Override become Post, and
    what was not done is remembered per (hook, selector) for the events."""
    hooks, monitored = [], {}
    for h, hook in enumerate(policy.hooks):
        selectors = []
        for s_i, sel in enumerate(hook.selectors):
            acts = sel.get("matchActions") or ()
            taken = [a["action"] for a in acts if a.get("action") in ENFORCING_ACTIONS]
            if taken:
                monitored[(h, s_i)] = taken[0]
                sel = dict(sel, matchActions=[a if a.get("action") not in ENFORCING_ACTIONS
                                              else {"action": "Post"} for a in acts])
            selectors.append(sel)
        hooks.append(dataclasses.replace(hook, selectors=tuple(selectors)))
    return dataclasses.replace(policy, hooks=hooks), monitored


@dataclass
class Entry:
    """One document of one file: a policy that loaded, or why it did not."""
    file: str
    document: int | None
    name: str
    digest: str                      # of the document's content, to spot changes
    policy: Policy | None = None
    program: PolicyProgram | None = None
    plans: list = field(default_factory=list)
    error: str = ""
    enabled: bool = True
    source: str = "directory"        # or "flag" (--tracing-policy), "api" (add())
    mode: str = "enforce"            # or "monitor": report what would be done, do nothing
    full_policy: Policy | None = None   # as written; `policy` is what the tracing program runs
    net_rules: list = field(default_factory=list)   # enforce_net.NetworkRule, by cgroup BPF
    slots: list = field(default_factory=list)       # their rule slots in the enforcer
    monitored: dict = field(default_factory=dict)   # (hook, selector) -> action not taken
    loaded: bool = False

    @property
    def state(self) -> str:
        if self.error:
            return "error"
        return "loaded" if self.enabled else "disabled"


def prepare(policy: Policy, features, mode: str = "enforce", default_backend: str = "auto"):
    """How `policy` runs on this kernel: (the tracing program's policy, its
    hook plans, the cgroup BPF network rules, the actions monitor mode does
    not take).  PlanError or EnforcementError if it cannot run as written:
    prevention this kernel cannot give is refused, never downgraded to watching."""
    reasons = enforce_net.unenforceable_overrides(policy, features)
    if reasons:
        raise hooks_mod.PlanError("; ".join(reasons))
    net_rules = enforce_net.network_rules(policy, monitor=mode == "monitor")
    if net_rules and not features.cgroup_sock_addr:
        raise hooks_mod.PlanError(
            "Override/Sigkill on network calls needs cgroup BPF (sock_addr programs), which "
            "this kernel refused: " + features.notes.get("cgroup_sock_addr", "unknown reason"))
    tracing = enforce_net.tracing_part(policy)
    monitored: dict = {}
    if mode == "monitor":
        tracing, monitored = _monitor_only(tracing)
    force = hooks_mod.forced_backend(policy)
    if force == "auto" and default_backend != "auto":   # --hook-backend, when the policy says nothing
        if default_backend not in ("kprobe", "tracepoint"):
            raise hooks_mod.PlanError(f"--hook-backend {default_backend}: the policy engine has no "
                                      "such backend yet (kprobe or tracepoint)")
        force = default_backend
    plans = [hooks_mod.plan(h, features, force) for h in tracing.hooks]
    return tracing, plans, net_rules, monitored


class PolicyManager:
    def __init__(self, directory: str, features, macros: dict, rb_pages: int, emit,
                 builder, cache, poller, extra_file: str = "", procfs: str = "/proc",
                 sync_processes=lambda: None, default_backend: str = "auto"):
        """`emit(kind, (event, json_line))` receives each policy event; `sync_processes()`
        drains the process sensor (see PolicyEvents)."""
        self.directory = directory
        self.features = features
        self.macros = macros
        self.rb_pages = rb_pages
        self.emit = emit
        self.builder = builder
        self.cache = cache
        self.poller = poller
        self.extra_file = extra_file
        self.procfs = procfs
        self.sync_processes = sync_processes
        self.default_backend = default_backend
        self.entries: list[Entry] = []
        self.counts = {"events": 0, "decode_errors": 0, "enforced": 0}
        self.enforcer: SockEnforcer | None = None
        self._slot_owner: dict[int, tuple[Entry, object]] = {}
        self._modes: dict[str, str] = {}      # set-mode, over the policy's own option
        self._entry_of: dict[int, Entry] = {}
        self.watcher: DirectoryWatcher | None = None
        self._dirty_since: float | None = None
        self._builders: dict[int, PolicyEvents] = {}

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        if os.path.isdir(self.directory):
            try:
                self.watcher = DirectoryWatcher(self.directory)
                self.poller.register(self.watcher.fileno(), self._on_inotify)
            except OSError as e:   # e.g. the inotify instance limit
                log.error("cannot watch %s (%s): policies change only on SIGHUP", self.directory, e)
        else:
            log.info("policy directory %s does not exist; no policies from it", self.directory)
        self.reload()

    def close(self) -> None:
        for e in self.entries:
            self._unload(e)
        self.entries = []
        if self.enforcer is not None:
            self.poller.unregister(self.enforcer.fileno())
            self.enforcer.close()   # its BPF links go with it: nothing stays blocked
        if self.watcher is not None:
            self.poller.unregister(self.watcher.fileno())
            self.watcher.close()

    def _on_inotify(self) -> None:
        if self.watcher.drain():
            self._dirty_since = time.monotonic()

    def tick(self) -> None:
        """Called from the daemon's loop: apply directory changes once they settle."""
        if self._dirty_since is not None and time.monotonic() - self._dirty_since >= SETTLE_S:
            self._dirty_since = None
            self.watcher.rewatch()
            self.reload()

    # -- the API --------------------------------------------------------------
    def list(self) -> list[dict]:
        out = []
        for e in self.entries:
            item = {"name": e.name, "file": e.file, "document": e.document, "state": e.state,
                    "source": e.source, "mode": e.mode}
            if e.error:
                item["error"] = e.error
            if e.policy is not None and e.plans:
                item["hooks"] = [{"hook": f"{h.kind} {h.name}", "backend": p.backend,
                                  "attach": [f"{k} {t}" for k, t, _ in p.attach],
                                  **({"note": p.note} if p.note else {})}
                                 for h, p in zip(e.policy.hooks, e.plans)]
            if e.net_rules:
                item.setdefault("hooks", []).extend(self._enforcement_lines(e))
            if e.program is not None:
                item["lost"] = e.program.lost()
                item["compile_s"] = round(e.program.compile_s, 2)
            out.append(item)
        return out

    def reload(self) -> None:
        """Re-read the directory (and --tracing-policy): load new or changed
        documents, unload removed ones, leave unchanged ones alone."""
        wanted: list[tuple[str, int | None, str, object, str]] = []
        root = Path(self.directory)
        for path in loader.policy_files(root):
            wanted += self._read(path, str(path.relative_to(root)), "directory")
        if self.extra_file:
            wanted += self._read(Path(self.extra_file), self.extra_file, "flag")
        keep = {(e.file, e.document, e.digest): e for e in self.entries}
        new_entries: list[Entry] = []
        for file, doc, source, result, digest in wanted:
            old = keep.pop((file, doc, digest), None)
            if old is not None:
                new_entries.append(old)
                continue
            new_entries.append(self._make_entry(file, doc, source, result, digest))
        api = [e for e in self.entries if e.source == "api"]
        self._replace(new_entries + api)

    def add(self, path: str) -> list[dict]:
        """Load one file from anywhere (as `tetra tracingpolicy add`)."""
        results = self._read(Path(path), str(path), "api")
        added = [self._make_entry(f, d, "api", r, dg) for f, d, _, r, dg in results]
        names = {e.name for e in added if e.name}
        self._replace([e for e in self.entries if e.name not in names or e.source != "api"] + added)
        return [i for i in self.list() if i["file"] == str(path)]

    def delete(self, name: str) -> bool:
        """Unload a policy; one from the directory comes back at the next reload
        of the directory (a change in it, or SIGHUP)."""
        for e in self.entries:
            if e.name == name and e.policy is not None:
                self._unload(e)
                self.entries.remove(e)
                log.info("policy %s deleted", name)
                return True
        return False

    def enable(self, name: str) -> bool:
        return self._set_enabled(name, True)

    def disable(self, name: str) -> bool:
        return self._set_enabled(name, False)

    def _set_enabled(self, name: str, enabled: bool) -> bool:
        for e in self.entries:
            if e.name == name and e.loaded:
                if e.program is not None:
                    e.program.set_enabled(enabled)
                if e.net_rules:
                    if enabled:
                        self._enforce(e)
                    else:
                        self._release_slots(e)
                e.enabled = enabled
                log.info("policy %s %s", name, "enabled" if enabled else "disabled")
                return True
        return False

    def lost(self) -> int:
        lost = sum(e.program.lost() for e in self.entries if e.program is not None)
        return lost + (self.enforcer.lost() if self.enforcer is not None else 0)

    def set_mode(self, name: str, mode: str) -> bool:
        """`tetrad tracingpolicy set-mode NAME enforce|monitor`: reload the
        policy in that mode (over its own policy-mode option)."""
        if mode not in MODES:
            raise ValueError(f"mode must be enforce or monitor, not {mode!r}")
        for e in self.entries:
            if e.name == name and e.full_policy is not None:
                self._modes[name] = mode
                fresh = self._make_entry(e.file, e.document, e.source, e.full_policy, e.digest)
                self._replace([fresh if x is e else x for x in self.entries])
                log.info("policy %s now in %s mode", name, mode)
                return True
        return False

    @staticmethod
    def _enforcement_lines(e: Entry) -> list[dict]:
        targets = {"connect": "cgroup connect4, connect6", "sendmsg": "cgroup sendmsg4, sendmsg6",
                   "socket": "cgroup sock_create"}
        out = []
        for nr in e.net_rules:
            what = next(k for k, bit in (("connect", 1), ("sendmsg", 2), ("socket", 4)) if nr.rule.hooks & bit)
            done = "reported, not refused (monitor mode)" if e.mode == "monitor" else (
                "refused with EPERM before the call" + (", then the caller is killed" if nr.kill else ""))
            out.append({"hook": f"kprobe {nr.call} (selector {nr.selector_index})",
                        "backend": "cgroup-bpf", "attach": [targets[what]], "note": done})
        return out

    # -- internals ------------------------------------------------------------
    @staticmethod
    def _read(path: Path, shown: str, source: str):
        """(file, document, source, Policy|PolicyError, digest) per document."""
        try:
            content = path.read_bytes()
        except OSError:
            content = b""
        file_digest = hashlib.sha256(content).hexdigest()
        out = []
        for r in loader.load_file(path, shown):
            digest = hashlib.sha256(repr(r.spec).encode()).hexdigest() if isinstance(r, Policy) else file_digest
            out.append((shown, r.document, source, r, digest))
        return out

    def _make_entry(self, file, doc, source, result, digest) -> Entry:
        if isinstance(result, PolicyError):
            log.error("policy rejected: %s", result)
            return Entry(file, doc, result.name, digest, error=str(result), source=source)
        policy: Policy = result
        if policy.kind == "TracingPolicyNamespaced":
            log.warning("policy %s: TracingPolicyNamespaced applies to every process here: tetrad "
                        "does not yet restrict it to the pods of namespace %r", policy.name, policy.namespace)
        entry = Entry(file, doc, policy.name, digest, policy=policy, source=source, full_policy=policy)
        try:
            entry.mode = self._modes.get(policy.name) or policy_mode(policy)
            entry.policy, entry.plans, entry.net_rules, entry.monitored = prepare(
                policy, self.features, entry.mode, self.default_backend)
        except (hooks_mod.PlanError, enforce_net.EnforcementError) as e:
            entry.error = f"{policy.where}: {e}"
            log.error("policy %s rejected: %s", policy.name, entry.error)
            return entry
        return entry

    def _replace(self, entries: list[Entry]) -> None:
        """Make `entries` the loaded set: attach the new ones, then drop what went away."""
        seen: dict[str, Entry] = {}
        for e in entries:
            if e.policy is None or e.error:
                continue
            if e.name in seen and seen[e.name] is not e:
                e.error = (f"{e.policy.where}: metadata.name: a policy named {e.name!r} is already "
                           f"loaded from {seen[e.name].file}")
                log.error("policy rejected: %s", e.error)
                continue
            seen[e.name] = e
            if not e.loaded:
                self._load(e)
        current = {id(e) for e in entries}
        for old in self.entries:
            if id(old) not in current:
                self._unload(old)
                log.info("policy %s (%s) unloaded", old.name or "?", old.file)
        self.entries = entries

    def _load(self, e: Entry) -> None:
        started = time.monotonic()
        if e.net_rules:
            try:
                self._enforce(e)
            except Exception as err:   # BCC's bare Exception included: the daemon keeps running
                e.error = f"{e.full_policy.where}: cannot enforce: {' '.join(str(err).split())}"
                log.error("policy %s not loaded: %s", e.name, e.error)
                return
        if not e.policy.hooks:   # everything it says is enforced by cgroup BPF
            e.loaded = True
            log.info("policy %s loaded from %s (%s mode): %d cgroup BPF rule(s)", e.name, e.file,
                     e.mode, len(e.net_rules))
            return
        try:
            program = PolicyProgram(e.policy, e.plans, self.macros, self.rb_pages,
                                    self.features.tracefs or "/sys/kernel/tracing", self.procfs)
            try:
                program.load()
                program.open(self._on_record)
            except Exception:
                program.close()
                raise
        except Exception as err:   # BCC raises bare Exception; a bad policy must not stop the daemon
            if not isinstance(err, (ProgramError, OSError, ValueError, KeyError)):
                err = ProgramError(" ".join(str(err).split()))
            e.error = f"{e.policy.where}: {err}"
            log.error("policy %s not loaded: %s", e.name, e.error)
            self._release_slots(e)
            return
        e.program = program
        e.loaded = True
        self._entry_of[id(program)] = e
        self._builders[id(program)] = PolicyEvents(e.policy, self.builder, self.cache, self.sync_processes)
        self.poller.register(program.fileno(), program.consume)
        log.info("policy %s loaded from %s in %.2fs: %s", e.name, e.file, time.monotonic() - started,
                 "; ".join(f"{h.kind} {h.name} -> {p.describe()}" for h, p in zip(e.policy.hooks, e.plans)))

    def _unload(self, e: Entry) -> None:
        self._release_slots(e)
        e.loaded = False
        if e.program is None:
            return
        self.poller.unregister(e.program.fileno())
        try:
            e.program.consume()   # what the kernel already queued still counts
        except Exception:
            pass
        self._builders.pop(id(e.program), None)
        self._entry_of.pop(id(e.program), None)
        e.program.close()
        e.program = None

    def _on_record(self, program: PolicyProgram, raw: bytes) -> None:
        builder = self._builders.get(id(program))
        if builder is None:
            return
        try:
            kind, event = builder.build(decode(raw))
        except (IndexError, ValueError) as err:
            self.counts["decode_errors"] += 1
            log.debug("undecodable policy record: %s", err)
            return
        entry = self._entry_of.get(id(program))
        if entry is not None and entry.monitored:
            rec = decode(raw)
            not_taken = entry.monitored.get((rec.hook, rec.selector - 1))   # rec.selector counts from 1
            if not_taken:
                body = event[kind]
                body["action"] = "KPROBE_ACTION_" + not_taken.upper()
                body["message"] = f"{body['message']} ({MONITOR_NOTE})" if body.get("message") else MONITOR_NOTE
        self.counts["events"] += 1
        self.emit(kind, (event, _encode(event)))

    # -- prevention by cgroup BPF ---------------------------------------------
    def _enforce(self, e: Entry) -> None:
        if self.enforcer is None:
            self.enforcer = SockEnforcer(self.features.cgroup_v2_root, self.macros,
                                         on_verdict=self._on_verdict)
            self.poller.register(self.enforcer.fileno(), self.enforcer.consume)
        free = self.enforcer.free_slots()
        if len(free) < len(e.net_rules):
            raise ValueError(f"{len(e.net_rules)} network rules do not fit: {len(free)} of "
                             "the enforcer's rule slots are free")
        running = {pid: p.binary for pid, p in self.cache.by_pid.items()}
        for slot, nr in zip(free, e.net_rules):
            self.enforcer.set_rule(slot, nr.rule, running)
            self._slot_owner[slot] = (e, nr)
            e.slots.append(slot)

    def _release_slots(self, e: Entry) -> None:
        for slot in e.slots:
            self.enforcer.clear_rule(slot)
            self._slot_owner.pop(slot, None)
        e.slots = []

    def _on_verdict(self, v) -> None:
        owner = self._slot_owner.get(v.rule)
        if owner is None:
            return
        e, nr = owner
        if nr.kill and v.action == ACTION_DENY:
            try:   # the call is already refused; Sigkill also ends the caller
                os.kill(v.pid, signal.SIGKILL)
            except OSError:
                pass
        proc = self.cache.find(v.pid)
        if proc is None:
            self.sync_processes()
            proc = self.cache.find(v.pid)
        parent = self.cache.parent_of(proc) if proc is not None else None
        hook = e.full_policy.hooks[nr.hook_index]
        kind, event = verdict_event(v, nr, e.full_policy, hook, self.builder, proc, parent)
        self.counts["enforced"] += 1
        self.emit(kind, (event, _encode(event)))
