"""The set of loaded policies, kept in step with the policy directory.

Transport-independent API (the daemon's status file today, its socket API
later): `list()`, `add(path)`, `delete(name)`, `enable(name)`,
`disable(name)`, `reload()`.  The directory is watched with inotify and
re-read on SIGHUP (`reload()`); a file whose content did not change keeps
its programs attached, so the events of unchanged policies never stop.  A
replaced policy's new programs are attached before the old ones are closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def state(self) -> str:
        if self.error:
            return "error"
        return "loaded" if self.enabled else "disabled"


class PolicyManager:
    def __init__(self, directory: str, features, macros: dict, rb_pages: int, emit,
                 builder, cache, poller, extra_file: str = "", procfs: str = "/proc",
                 sync_processes=lambda: None):
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
        self.entries: list[Entry] = []
        self.counts = {"events": 0, "decode_errors": 0}
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
                    "source": e.source}
            if e.error:
                item["error"] = e.error
            if e.policy is not None and e.plans:
                item["hooks"] = [{"hook": f"{h.kind} {h.name}", "backend": p.backend,
                                  "attach": [f"{k} {t}" for k, t, _ in p.attach],
                                  **({"note": p.note} if p.note else {})}
                                 for h, p in zip(e.policy.hooks, e.plans)]
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
            if e.name == name and e.program is not None:
                e.program.set_enabled(enabled)
                e.enabled = enabled
                log.info("policy %s %s", name, "enabled" if enabled else "disabled")
                return True
        return False

    def lost(self) -> int:
        return sum(e.program.lost() for e in self.entries if e.program is not None)

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
        entry = Entry(file, doc, policy.name, digest, policy=policy, source=source)
        try:
            force = hooks_mod.forced_backend(policy)
            entry.plans = [hooks_mod.plan(h, self.features, force) for h in policy.hooks]
        except hooks_mod.PlanError as e:
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
            if e.program is None:
                self._load(e)
        current = {id(e) for e in entries}
        for old in self.entries:
            if id(old) not in current:
                self._unload(old)
                log.info("policy %s (%s) unloaded", old.name or "?", old.file)
        self.entries = entries

    def _load(self, e: Entry) -> None:
        started = time.monotonic()
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
            return
        e.program = program
        self._builders[id(program)] = PolicyEvents(e.policy, self.builder, self.cache, self.sync_processes)
        self.poller.register(program.fileno(), program.consume)
        log.info("policy %s loaded from %s in %.2fs: %s", e.name, e.file, time.monotonic() - started,
                 "; ".join(f"{h.kind} {h.name} -> {p.describe()}" for h, p in zip(e.policy.hooks, e.plans)))

    def _unload(self, e: Entry) -> None:
        if e.program is None:
            return
        self.poller.unregister(e.program.fileno())
        try:
            e.program.consume()   # what the kernel already queued still counts
        except Exception:
            pass
        self._builders.pop(id(e.program), None)
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
        self.counts["events"] += 1
        self.emit(kind, (event, _encode(event)))
