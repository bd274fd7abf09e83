"""Reading TracingPolicy files: discovery in the policy directory, YAML/JSON
documents, and validation into `Policy` objects or one-line errors.

Every problem becomes a `PolicyError` whose text names the file, the
document, the field and the reason, e.g.
`bad.yaml[0]: spec.kprobes[0].args[1].type: unknown type "flie"`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import schema, validate
from .model import Policy, hooks_of

API_VERSION = "cilium.io/v1alpha1"
KINDS = ("TracingPolicy", "TracingPolicyNamespaced")
SUFFIXES = (".yaml", ".yml", ".json")

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class PolicyError:
    file: str
    document: int | None      # None: the file itself could not be read
    name: str                 # metadata.name when known
    field: str
    reason: str

    def __str__(self) -> str:
        where = self.file if self.document is None else f"{self.file}[{self.document}]"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


def policy_files(directory: str | os.PathLike) -> list[Path]:
    """Policy files in `directory` and one level of subdirectories, sorted;
    hidden files (editors' temporaries, `..data` of Kubernetes ConfigMaps) are skipped."""
    root = Path(directory)
    found = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            try:
                found += sorted(p for p in entry.iterdir()
                                if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file())
            except OSError:
                continue
        elif entry.suffix in SUFFIXES and entry.is_file():
            found.append(entry)
    return found


def load_file(path: str | os.PathLike, shown_as: str | None = None) -> list[Policy | PolicyError]:
    """Every document of one file, as a Policy or a PolicyError."""
    path = Path(path)
    shown = shown_as or path.name
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return [PolicyError(shown, None, "", "", f"cannot read: {e}")]
    try:
        if path.suffix == ".json":
            docs = [json.loads(text)]
        else:
            docs = list(yaml.load_all(text, Loader=_Loader))
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        return [PolicyError(shown, None, "", "", f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                                 + " ".join(str(e).split()))]
    out: list[Policy | PolicyError] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue   # an empty document, e.g. after a trailing `---`
        out.append(load_document(doc, shown, i))
    if not out:
        out.append(PolicyError(shown, None, "", "", "no policy in the file"))
    return out


def load_document(doc, file: str, index: int | None) -> Policy | PolicyError:
    def error(field: str, reason: str) -> PolicyError:
        return PolicyError(file, index, name, field, reason)

    name = ""
    if not isinstance(doc, dict):
        return error("", f"expected a mapping with apiVersion, kind, metadata and spec, got {type(doc).__name__}")
    meta = doc.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        name = meta["name"]
    if doc.get("apiVersion") != API_VERSION:
        return error("apiVersion", f"{doc.get('apiVersion')!r} is not {API_VERSION}")
    if doc.get("kind") not in KINDS:
        return error("kind", f"{doc.get('kind')!r} is not one of {', '.join(KINDS)}")
    if not name:
        return error("metadata.name", "required field missing")
    if doc["kind"] == "TracingPolicyNamespaced" and not meta.get("namespace"):
        return error("metadata.namespace", "required for a TracingPolicyNamespaced (the namespace "
                                           "whose pods it applies to)")
    if not isinstance(doc.get("spec"), dict):
        return error("spec", "required field missing" if "spec" not in doc else "expected object")
    problems = schema.validate(doc["spec"], schema.spec_schema(), "spec")
    if not problems:
        problems = validate.check_spec(doc["spec"])
    if problems:
        field, reason = problems[0]
        err = error(field, reason)
        if len(problems) > 1:
            err.reason += f" (and {len(problems) - 1} more)"
        return err
    policy = Policy(name=name, kind=doc["kind"], file=file, document=index, spec=doc["spec"],
                    namespace=str(meta.get("namespace") or ""))
    policy.hooks = hooks_of(doc["spec"])
    return policy


def load_directory(directory: str | os.PathLike) -> list[Policy | PolicyError]:
    root = Path(directory)
    out: list[Policy | PolicyError] = []
    for path in policy_files(root):
        out += load_file(path, str(path.relative_to(root)))
    return out
