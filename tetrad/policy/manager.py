"""The set of loaded policies, kept in step with the policy directory.

Transport-independent API (the daemon's status file today, its socket API
later): `list()`, `add(path)`, `delete(name)`, `enable(name)`,
`disable(name)`, `reload()`; from other threads, `kubernetes_policy()` (the
custom resources of Kubernetes mode) and `workloads_changed()` (containers
came or went: scoped policies follow them, see scope.py).  The directory is
watched with inotify and re-read on SIGHUP (`reload()`); a file whose content
did not change keeps its programs attached, so the events of unchanged
policies never stop.  A changed policy whose hooks attach where they did
keeps its programs too: its new configuration is switched in at once (see
PolicyProgram.reconfigure), nothing is detached, no event is lost or
doubled.  Otherwise its new programs are attached before the old ones are
closed.  New programs are instances of a compiled template (see
tetrad/bpf_template.py), so only a daemon's first policy waits for clang.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..bpf_template import TemplateCache
from ..enforce import devices as enforce_dev
from ..enforce import network as enforce_net
from ..enforce.devcgroup import DeviceEnforcer
from ..enforce.events import MONITOR_NOTE, device_event, verdict_event
from ..enforce.sock import SockEnforcer
from . import hooks as hooks_mod
from . import loader
from .events import PolicyEvents, decode
from .inbox import Inbox
from .inotify import DirectoryWatcher
from .loader import PolicyError
from .model import Policy
from .program import CONFIGURATIONS, PolicyProgram, ProgramError
from .scope import Scope, scope_of

log = logging.getLogger("tetrad.policy")

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

SETTLE_S = 0.15   # a file still being written: wait until its writes have stopped this long
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
    dev_rules: list = field(default_factory=list)   # enforce_dev.DeviceRuleSpec, by cgroup BPF
    dev_slots: list = field(default_factory=list)   # their rule slots in the device enforcer
    monitored: dict = field(default_factory=dict)   # (hook, selector) -> action not taken
    loaded: bool = False
    scope: Scope | None = None       # the pods/containers it applies to; None: every process
    scope_ids: set = field(default_factory=set)     # their cgroup ids, as the kernel has them

    @property
    def state(self) -> str:
        if self.error:
            return "error"
        return "loaded" if self.enabled else "disabled"


def prepare(policy: Policy, features, mode: str = "enforce", default_backend: str = "auto"):
    """How `policy` runs on this kernel: (the tracing program's policy, its
    hook plans, the cgroup BPF network rules, the actions monitor mode does
    not take, the cgroup BPF device rules).  PlanError or EnforcementError if
    it cannot run as written: prevention this kernel cannot give is refused,
    never downgraded to watching."""
    dev_rules, not_devices = enforce_dev.device_rules(policy, monitor=mode == "monitor")
    devices = {(r.hook_index, r.selector_index) for r in dev_rules}
    reasons = enforce_net.unenforceable_overrides(policy, features, devices, not_devices)
    if reasons:
        raise hooks_mod.PlanError("; ".join(reasons))
    net_rules = enforce_net.network_rules(policy, monitor=mode == "monitor")
    if net_rules and not features.cgroup_sock_addr:
        raise hooks_mod.PlanError(
            "Override/Sigkill on network calls needs cgroup BPF (sock_addr programs), which "
            "this kernel refused: " + features.notes.get("cgroup_sock_addr", "unknown reason"))
    tracing = enforce_net.tracing_part(policy, devices)
    overriding = {h.path for h in tracing.hooks
                  if any(a.get("action") == "Override" for sel in h.selectors for a in sel.get("matchActions") or ())}
    monitored: dict = {}
    if mode == "monitor":
        tracing, monitored = _monitor_only(tracing)
    force = hooks_mod.forced_backend(policy)
    if force == "auto":   # --hook-backend, when the policy says nothing
        force = default_backend
    plans = [hooks_mod.plan(h, features, force, override=h.path in overriding) for h in tracing.hooks]
    return tracing, plans, net_rules, monitored, dev_rules


class PolicyManager:
    def __init__(self, directory: str, features, macros: dict, rb_pages: int, emit,
                 builder, cache, poller, extra_file: str = "", procfs: str = "/proc",
                 sync_processes=lambda: None, default_backend: str = "auto", workloads=lambda: []):
        """`emit(kind, (event, json_line))` receives each policy event; `sync_processes()`
        drains the process sensor (see PolicyEvents); `workloads()` lists the
        containers scoped policies choose from (scope.Workload)."""
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
        self.workloads = workloads
        self.inbox = Inbox()
        self.entries: list[Entry] = []
        self.counts = {"events": 0, "decode_errors": 0, "enforced": 0}
        self.enforcer: SockEnforcer | None = None
        self._slot_owner: dict[int, tuple[Entry, object]] = {}
        self.dev_enforcer: DeviceEnforcer | None = None
        self._dev_slot_owner: dict[int, tuple[Entry, object]] = {}
        self._modes: dict[str, str] = {}      # set-mode, over the policy's own option
        # per program, per configuration (PolicyProgram.conf): whose records they are
        self._routes: dict[int, list[tuple[Entry, PolicyEvents] | None]] = {}
        self.templates = TemplateCache()
        self.watcher: DirectoryWatcher | None = None
        self._dirty_since: float | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self.poller.register(self.inbox.fd, self._drain_inbox)
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
        self.templates.close()
        if self.enforcer is not None:
            self.poller.unregister(self.enforcer.fileno())
            self.enforcer.close()   # its BPF links go with it: nothing stays blocked
        if self.dev_enforcer is not None:
            self.poller.unregister(self.dev_enforcer.fileno())
            self.dev_enforcer.close()
        if self.watcher is not None:
            self.poller.unregister(self.watcher.fileno())
            self.watcher.close()
        self.poller.unregister(self.inbox.fd)
        self.inbox.close()

    def _on_inotify(self) -> None:
        if self.watcher.drain():
            # whole changes (a rename into place, a closed file, a delete) at
            # once; a file still being written once it has been left alone
            self._dirty_since = time.monotonic() - (SETTLE_S if self.watcher.complete() else 0)

    def tick(self) -> None:
        """Called from the daemon's loop: apply directory changes once they settle."""
        if self._dirty_since is not None and time.monotonic() - self._dirty_since >= SETTLE_S:
            self._dirty_since = None
            self.watcher.settled()
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
            if e.scope is not None:
                item["scope"] = e.scope.describe()
                item["scope_cgroups"] = len(e.scope_ids)
            if e.policy is not None and e.plans:
                item["hooks"] = [{"hook": f"{h.kind} {h.name}", "backend": p.backend,
                                  "attach": [f"{k} {t}" for k, t, _ in p.attach],
                                  **({"note": p.note} if p.note else {})}
                                 for h, p in zip(e.policy.hooks, e.plans)]
            if e.net_rules or e.dev_rules:
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
        others = [e for e in self.entries if e.source in ("api", "k8s")]
        self._replace(new_entries + others)

    def add(self, path: str) -> list[dict]:
        """Load one file from anywhere (as `tetra tracingpolicy add`)."""
        results = self._read(Path(path), str(path), "api")
        added = [self._make_entry(f, d, "api", r, dg) for f, d, _, r, dg in results]
        names = {e.name for e in added if e.name}
        self._replace([e for e in self.entries if e.name not in names or e.source != "api"] + added)
        return [i for i in self.list() if i["file"] == str(path)]

    # -- from other threads ---------------------------------------------------
    def kubernetes_policy(self, action: str, document: dict) -> None:
        """A TracingPolicy(Namespaced) custom resource ADDED, MODIFIED or DELETED."""
        self.inbox.put(("k8s", action, document))

    def workloads_changed(self) -> None:
        self.inbox.put(("workloads",))

    def _drain_inbox(self) -> None:
        scopes = False
        for item in self.inbox.drain():
            if item[0] == "k8s":
                self._apply_k8s(item[1], item[2])
            scopes = True
        if scopes:
            self.refresh_scopes()

    def _apply_k8s(self, action: str, doc: dict) -> None:
        """Load, replace or remove a custom resource like a file; it is named
        k8s:NAMESPACE/NAME (k8s:NAME for a cluster-wide one) in errors and lists."""
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        file = f"k8s:{ns}/{name}" if ns else f"k8s:{name}"
        others = [e for e in self.entries if not (e.source == "k8s" and e.file == file)]
        if action == "DELETED":
            if len(others) != len(self.entries):
                log.info("policy %s removed from the Kubernetes API", file)
                self._replace(others)
            return
        digest = hashlib.sha256(json.dumps([doc.get("kind"), meta.get("namespace"), doc.get("spec")],
                                           sort_keys=True, default=str).encode()).hexdigest()
        if any(e.source == "k8s" and e.file == file and e.digest == digest for e in self.entries):
            return     # a resync of what is loaded
        result = loader.load_document(doc, file, None)
        self._replace(others + [self._make_entry(file, None, "k8s", result, digest)])

    def refresh_scopes(self) -> None:
        """Bring every scoped policy's cgroup ids in the kernel up to date."""
        if not any(e.scope is not None and e.loaded for e in self.entries):
            return
        workloads = self.workloads()
        for e in self.entries:
            if e.scope is not None and e.loaded:
                self._apply_scope(e, e.scope.cgroup_ids(workloads))

    def _apply_scope(self, e: Entry, ids: set[int]) -> None:
        if ids == e.scope_ids:
            return
        try:
            if e.program is not None:
                e.program.set_scope(ids)
            for nr in e.net_rules + e.dev_rules:   # kept current while disabled too: enable() installs them
                nr.rule.cgroup_ids = set(ids)
            for slot in e.slots:
                self.enforcer.set_cgroups(slot, ids)
            for slot in e.dev_slots:
                self.dev_enforcer.set_cgroups(slot, ids)
        except Exception as err:   # a full map: say so, keep what is in force, keep running
            log.error("policy %s: cannot bring its scope to %d cgroups: %s", e.name, len(ids), err)
            return
        log.info("policy %s applies to %d cgroup(s) (%s)", e.name, len(ids), e.scope.describe())
        e.scope_ids = ids

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
                if e.net_rules or e.dev_rules:
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
        return lost + sum(x.lost() for x in (self.enforcer, self.dev_enforcer) if x is not None)

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
        for dr in e.dev_rules:
            done = "reported, not refused (monitor mode)" if e.mode == "monitor" else (
                f"opening refused with EPERM for {len(dr.paths)} device(s) named now"
                + (", then the caller is killed" if dr.kill else ""))
            out.append({"hook": f"kprobe {dr.call} (selector {dr.selector_index})",
                        "backend": "cgroup-bpf", "attach": ["cgroup device"], "note": done,
                        "devices": sorted(dr.paths.values())})
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
        entry = Entry(file, doc, policy.name, digest, policy=policy, source=source, full_policy=policy,
                      scope=scope_of(policy.kind, policy.namespace, policy.spec))
        try:
            entry.mode = self._modes.get(policy.name) or policy_mode(policy)
            entry.policy, entry.plans, entry.net_rules, entry.monitored, entry.dev_rules = prepare(
                policy, self.features, entry.mode, self.default_backend)
        except (hooks_mod.PlanError, enforce_net.EnforcementError) as e:
            entry.error = f"{policy.where}: {e}"
            log.error("policy %s rejected: %s", policy.name, entry.error)
            return entry
        return entry

    def _replace(self, entries: list[Entry]) -> None:
        """Make `entries` the loaded set: attach the new ones (a policy that
        changed may take over its old programs), then drop what went away."""
        def key(e: Entry) -> tuple:
            return (e.policy.namespace if e.policy.kind == "TracingPolicyNamespaced" else "", e.name)

        current = {id(e) for e in entries}
        leaving = {key(e): e for e in self.entries if id(e) not in current and e.program is not None}
        seen: dict[tuple, Entry] = {}
        for e in entries:
            if e.policy is None or e.error:
                continue
            if key(e) in seen and seen[key(e)] is not e:
                e.error = (f"{e.policy.where}: metadata.name: a policy named {e.name!r} is already "
                           f"loaded from {seen[key(e)].file}")
                log.error("policy rejected: %s", e.error)
                continue
            seen[key(e)] = e
            if not e.loaded:
                self._load(e, leaving.pop(key(e), None))
        for old in self.entries:
            if id(old) not in current:
                self._unload(old)
                log.info("policy %s (%s) unloaded", old.name or "?", old.file)
        self.entries = entries

    def _load(self, e: Entry, previous: Entry | None = None) -> None:
        """Load `e`, on the programs of `previous` (the same policy as it was) where they fit."""
        started = time.monotonic()
        if e.scope is not None:   # in force from the first event on
            e.scope_ids = e.scope.cgroup_ids(self.workloads())
            for nr in e.net_rules + e.dev_rules:
                nr.rule.cgroup_ids = set(e.scope_ids)
        if e.net_rules or e.dev_rules:
            try:
                self._enforce(e)
            except Exception as err:   # BCC's bare Exception included: the daemon keeps running
                e.error = f"{e.full_policy.where}: cannot enforce: {' '.join(str(err).split())}"
                log.error("policy %s not loaded: %s", e.name, e.error)
                self._release_slots(e)
                return
        if not e.policy.hooks:   # everything it says is enforced by cgroup BPF
            e.loaded = True
            log.info("policy %s loaded from %s (%s mode): %d cgroup BPF rule(s)", e.name, e.file,
                     e.mode, len(e.net_rules) + len(e.dev_rules))
            return
        reused = self._take_over(previous, e)
        if reused:
            program = previous.program
            previous.program = None   # e's now: unloading `previous` leaves it alone
        else:
            try:
                program = PolicyProgram(e.policy, e.plans, self.macros, self.rb_pages,
                                        self.features.tracefs or "/sys/kernel/tracing", self.procfs,
                                        self.templates)
                try:
                    if e.scope is not None:
                        program.set_scope(e.scope_ids)
                    program.open(self._on_record)
                    program.load()   # judges from here on ...
                    if previous is not None and previous.program is not None:
                        previous.program.set_enabled(False)   # ... and the old programs no more
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
            self._routes[id(program)] = [None] * CONFIGURATIONS
            self.poller.register(program.fileno(), program.consume)
        e.program = program
        e.loaded = True
        self._routes[id(program)][program.conf] = (
            e, PolicyEvents(e.policy, self.builder, self.cache, self.sync_processes))
        log.info("policy %s %s from %s in %.2fs: %s", e.name,
                 "changed in place" if reused else "loaded", e.file, time.monotonic() - started,
                 "; ".join(f"{h.kind} {h.name} -> {p.describe()}" for h, p in zip(e.policy.hooks, e.plans)))
        if e.scope is not None:
            log.info("policy %s applies only to %s: %d cgroup(s) now", e.name,
                     e.scope.describe(), len(e.scope_ids))

    def _take_over(self, previous: Entry | None, e: Entry) -> bool:
        """Whether `e` now runs on the programs of `previous` (reconfigured)."""
        if previous is None or previous.program is None:
            return False
        program = previous.program
        try:
            # what the configuration about to be overwritten judged is rendered by its route first
            program.consume()
            if not e.enabled:
                program.set_enabled(False)   # before the switch: a disabled policy judges nothing
            if not program.reconfigure(e.policy, e.plans):
                return False
        except Exception as err:   # e.g. a full value map: new programs instead
            log.info("policy %s: cannot change it in place (%s); loading it anew", e.name,
                     " ".join(str(err).split()))
            return False
        program.set_scope(e.scope_ids if e.scope is not None else None)
        program.set_enabled(e.enabled)
        return True

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
        self._routes.pop(id(e.program), None)
        e.program.close()
        e.program = None

    def _on_record(self, program: PolicyProgram, raw: bytes) -> None:
        routes = self._routes.get(id(program))
        if routes is None:
            return
        try:
            rec = decode(raw)
            route = routes[program.conf_of(rec.flags)]   # the configuration that judged it
            if route is None:
                raise ValueError("record of a configuration never loaded")
            entry, builder = route
            kind, event = builder.build(rec)
        except (IndexError, ValueError) as err:
            self.counts["decode_errors"] += 1
            log.debug("undecodable policy record: %s", err)
            return
        if entry.monitored:
            not_taken = entry.monitored.get((rec.hook, rec.selector - 1))   # rec.selector counts from 1
            if not_taken:
                body = event[kind]
                body["action"] = "KPROBE_ACTION_" + not_taken.upper()
                body["message"] = f"{body['message']} ({MONITOR_NOTE})" if body.get("message") else MONITOR_NOTE
        self.counts["events"] += 1
        self.emit(kind, (event, _encode(event)))

    # -- prevention by cgroup BPF ---------------------------------------------
    def _enforce(self, e: Entry) -> None:
        running = {pid: p.binary for pid, p in self.cache.by_pid.items()}
        if e.dev_rules:
            if self.dev_enforcer is None:
                self.dev_enforcer = self._start_enforcer(DeviceEnforcer, self._on_device_verdict)
            self._install(self.dev_enforcer, e, e.dev_rules, e.dev_slots, self._dev_slot_owner,
                          "device", running)
        if e.net_rules:
            if self.enforcer is None:
                self.enforcer = self._start_enforcer(SockEnforcer, self._on_verdict)
            self._install(self.enforcer, e, e.net_rules, e.slots, self._slot_owner, "network", running)

    def _start_enforcer(self, cls, on_verdict):
        enforcer = cls(self.features.cgroup_v2_root, self.macros, on_verdict=on_verdict)
        self.poller.register(enforcer.fileno(), enforcer.consume)
        return enforcer

    @staticmethod
    def _install(enforcer, e: Entry, rules: list, slots: list, owners: dict, what: str,
                 running: dict[int, str]) -> None:
        """Put a policy's rules into free slots of `enforcer`, noting whose they are."""
        free = enforcer.free_slots()
        if len(free) < len(rules):
            raise ValueError(f"{len(rules)} {what} rules do not fit: {len(free)} of "
                             f"the {what} enforcer's rule slots are free")
        for slot, spec in zip(free, rules):
            enforcer.set_rule(slot, spec.rule, running)
            owners[slot] = (e, spec)
            slots.append(slot)

    def _release_slots(self, e: Entry) -> None:
        for slot in e.slots:
            self.enforcer.clear_rule(slot)
            self._slot_owner.pop(slot, None)
        e.slots = []
        for slot in e.dev_slots:
            self.dev_enforcer.clear_rule(slot)
            self._dev_slot_owner.pop(slot, None)
        e.dev_slots = []

    def _on_device_verdict(self, v) -> None:
        self._report(v, self._dev_slot_owner, device_event)

    def _on_verdict(self, v) -> None:
        self._report(v, self._slot_owner, verdict_event)

    def _report(self, v, owners: dict, make_event) -> None:
        """The event of a call a cgroup rule refused (or, in monitor mode, would have)."""
        owner = owners.get(v.rule)
        if owner is None:
            return
        e, spec = owner
        proc, parent = self._process(v.pid)
        hook = e.full_policy.hooks[spec.hook_index]
        kind, event = make_event(v, spec, e.full_policy, hook, self.builder, proc, parent)
        self.counts["enforced"] += 1
        self.emit(kind, (event, _encode(event)))

    def _process(self, pid: int):
        """The process (and parent) a refused call came from; Sigkill's kill
        was sent in the kernel as the call returned (ACTION_KILL)."""
        proc = self.cache.find(pid)
        if proc is None:
            self.sync_processes()
            proc = self.cache.find(pid)
        return proc, (self.cache.parent_of(proc) if proc is not None else None)

