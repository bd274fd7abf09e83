"""Validating a policy's `spec` against Tetragon's CRD schema.

tracingpolicy-spec.schema.json is the OpenAPI v3 schema of `spec` from
Tetragon's CustomResourceDefinition (cilium.io_tracingpolicies.yaml, Apache-2.0,
descriptions removed; TracingPolicyNamespaced has the same spec).  This module
checks the subset of OpenAPI that schema uses (type, properties, required,
enum, items, maxItems, minimum, maxLength, pattern, additionalProperties) and
reports each problem with its field path.  Unlike Kubernetes, which prunes an
unknown field silently, an unknown field here is an error: a misspelt
`selectors` must not turn into a policy that matches everything.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("tracingpolicy-spec.schema.json")


# Actions older Tetragon releases had and users' policies still use; newer
# CRDs dropped them from the enum, tetrad accepts them (with their fields).
FD_ACTIONS = ("FollowFD", "UnfollowFD", "CopyFD")
FD_ACTION_FIELDS = ("argFd", "argName")


@functools.cache
def spec_schema() -> dict:
    with open(SCHEMA_FILE) as f:
        schema = json.load(f)
    _add_fd_actions(schema)
    return schema


def _add_fd_actions(node) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if props and "action" in props and "Sigkill" in props["action"].get("enum", ()):
            props["action"]["enum"] = props["action"]["enum"] + [a for a in FD_ACTIONS
                                                                 if a not in props["action"]["enum"]]
            for name in FD_ACTION_FIELDS:
                props.setdefault(name, {"type": "integer", "format": "int32", "minimum": 0})
        for value in node.values():
            _add_fd_actions(value)
    elif isinstance(node, list):
        for value in node:
            _add_fd_actions(value)


_INT_RANGES = {"int32": (-(1 << 31), (1 << 31) - 1), "int64": (-(1 << 63), (1 << 63) - 1),
               "uint32": (0, (1 << 32) - 1), "uint64": (0, (1 << 64) - 1)}


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _leaf_name(path: str) -> str:
    """`spec.kprobes[0].args[1].type` -> `type`, for messages like `unknown type "x"`."""
    return re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1]) or "value"


def validate(value, schema: dict, path: str) -> list[tuple[str, str]]:
    """(field path, reason) for every violation, in document order."""
    errors: list[tuple[str, str]] = []
    _check(value, schema, path, errors)
    return errors


def _check(value, schema: dict, path: str, errors: list) -> None:
    want = schema.get("type")
    got = _type_name(value)
    if want and got != want and not (want == "number" and got == "integer"):
        errors.append((path, f"expected {want}, got {got} {json.dumps(value, default=str)[:60]}"))
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append((path, f"unknown {_leaf_name(path)} {json.dumps(value)} "
                             f"(one of: {', '.join(map(str, schema['enum']))})"))
        return
    if got == "integer":
        lo, hi = _INT_RANGES.get(schema.get("format", ""), (None, None))
        if "minimum" in schema and value < schema["minimum"]:
            errors.append((path, f"{value} is below the minimum {schema['minimum']}"))
        elif lo is not None and not lo <= value <= hi:
            errors.append((path, f"{value} does not fit in {schema['format']}"))
    elif got == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append((path, f"longer than {schema['maxLength']} characters"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append((path, f"{json.dumps(value)} does not match {schema['pattern']}"))
    elif got == "array":
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append((path, f"at most {schema['maxItems']} items allowed, {len(value)} given"))
        items = schema.get("items")
        if items:
            for i, item in enumerate(value):
                _check(item, items, f"{path}[{i}]", errors)
    elif got == "object":
        props = schema.get("properties")
        for name in schema.get("required", ()):
            if name not in value:
                errors.append((f"{path}.{name}", "required field missing"))
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = f"{path}.{key}"
            if props is not None and key in props:
                _check(item, props[key], sub, errors)
            elif isinstance(extra, dict):
                _check(item, extra, sub, errors)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append((sub, f"unknown field {json.dumps(key)}"))
