"""Loading and validating TracingPolicy files (no BPF): discovery, documents,
Tetragon's schema, Tetragon's limits, unsupported features, and the corpus of
Tetragon's own example policies."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from tetrad import features as features_mod
from tetrad.enforce.network import EnforcementError
from tetrad.policy import hooks, loader, manager, validate
from tetrad.policy.loader import PolicyError

EXAMPLES = Path(__file__).parent / "data" / "tetragon-examples"
REPO_EXAMPLES = Path(__file__).resolve().parent.parent / "etc" / "tetrad" / "examples"

GOOD = """\
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: good
spec:
  kprobes:
  - call: sys_read
    syscall: true
    args:
    - index: 0
      type: fd
"""


def load_text(tmp_path, text, name="p.yaml"):
    (tmp_path / name).write_text(text)
    return loader.load_file(tmp_path / name)


def error_of(tmp_path, text) -> str:
    [r] = load_text(tmp_path, text)
    assert isinstance(r, PolicyError), r
    return str(r)


def with_spec(spec_yaml: str) -> str:
    return GOOD.split("spec:")[0] + "spec:\n" + spec_yaml


def test_good_policy_loads(tmp_path):
    [p] = load_text(tmp_path, GOOD)
    assert p.name == "good" and p.kind == "TracingPolicy"
    [h] = p.hooks
    assert (h.kind, h.name, h.syscall, h.args[0].type) == ("kprobe", "sys_read", True, "fd")


def test_unknown_type_names_file_document_and_field(tmp_path):
    text = GOOD + "    - index: 1\n      type: flie\n"
    msg = error_of(tmp_path, text)
    assert msg.startswith('p.yaml[0]: spec.kprobes[0].args[1].type: unknown type "flie"'), msg


def test_multi_document_file_and_kinds(tmp_path):
    ns = GOOD.replace("kind: TracingPolicy", "kind: TracingPolicyNamespaced").replace(
        "name: good", "name: other\n  namespace: default")
    bad = GOOD.replace("apiVersion: cilium.io/v1alpha1", "apiVersion: cilium.io/v2")
    results = load_text(tmp_path, GOOD + "---\n" + ns + "---\n" + bad + "---\n")
    assert [type(r).__name__ for r in results] == ["Policy", "Policy", "PolicyError"]
    assert results[1].namespace == "default" and results[1].kind == "TracingPolicyNamespaced"
    assert str(results[2]).startswith("p.yaml[2]: apiVersion:")


def test_json_and_yml_files_and_one_level_of_subdirectories(tmp_path):
    import json
    import yaml
    (tmp_path / "a.yml").write_text(GOOD.replace("good", "a"))
    (tmp_path / "b.json").write_text(json.dumps(yaml.safe_load(GOOD.replace("good", "b"))))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text(GOOD.replace("good", "c"))
    (tmp_path / "sub" / "deeper").mkdir()
    (tmp_path / "sub" / "deeper" / "d.yaml").write_text(GOOD.replace("good", "d"))
    (tmp_path / "notes.txt").write_text("not a policy")
    (tmp_path / ".hidden.yaml").write_text("{")
    results = loader.load_directory(tmp_path)
    assert sorted((r.name, r.file) for r in results) == [("a", "a.yml"), ("b", "b.json"), ("c", "sub/c.yaml")]


def test_broken_yaml_is_one_clear_line(tmp_path):
    msg = error_of(tmp_path, "apiVersion: [unclosed\n")
    assert msg.startswith("p.yaml: not valid YAML:") and "\n" not in msg


@pytest.mark.parametrize("spec, where, reason", [
    ("  kprobes:\n  - call: x\n    selecters: []\n", "spec.kprobes[0].selecters", 'unknown field "selecters"'),
    ("  kprobes:\n  - syscall: true\n", "spec.kprobes[0].call", "required field missing"),
    ("  kprobes:\n  - call: x\n    args:\n    - index: -1\n      type: int\n",
     "spec.kprobes[0].args[0].index", "below the minimum 0"),
    ("  kprobes:\n  - call: x\n    return: true\n", "spec.kprobes[0].returnArg", "ReturnArg not specified"),
    ("  kprobes: {}\n", "spec.kprobes", "expected array"),
])
def test_schema_errors(tmp_path, spec, where, reason):
    msg = error_of(tmp_path, with_spec(spec))
    assert msg.startswith(f"p.yaml[0]: {where}: ") and reason in msg, msg


def selector_policy(selectors: str, args="    - index: 0\n      type: int\n") -> str:
    return with_spec("  kprobes:\n  - call: sys_x\n    syscall: true\n    args:\n" + args +
                     "    selectors:\n" + selectors)


def match_args(op, values, index=0):
    vals = "".join(f"        - \"{v}\"\n" for v in values)
    return f"    - matchArgs:\n      - index: {index}\n        operator: {op}\n        values:\n{vals}"


@pytest.mark.parametrize("at, over, where, reason", [
    ("".join(match_args("Equal", [1]) for _ in range(5)), "".join(match_args("Equal", [1]) for _ in range(6)),
     "spec.kprobes[0].selectors", "no more than 5 selectors"),
    (match_args("Equal", range(4)), match_args("Equal", range(5)),
     "spec.kprobes[0].selectors[0].matchArgs[0].values", "more than 4 values"),
    (match_args("InRange", ["1:2"] * 4), match_args("InRange", ["1:2"] * 5),
     "spec.kprobes[0].selectors[0].matchArgs[0].values", "more than 4 values"),
])
def test_limits_at_and_over(tmp_path, at, over, where, reason):
    [ok] = load_text(tmp_path, selector_policy(at))
    assert not isinstance(ok, PolicyError), ok
    msg = error_of(tmp_path, selector_policy(over))
    assert f": {where}: " in msg and reason in msg, msg


def test_string_limits_at_and_over(tmp_path):
    args = "    - index: 0\n      type: string\n"
    for op, limit in (("Prefix", validate.PREFIX_MAX_LEN), ("Postfix", validate.POSTFIX_MAX_LEN)):
        [ok] = load_text(tmp_path, selector_policy(match_args(op, ["a" * limit]), args))
        assert not isinstance(ok, PolicyError), ok
        msg = error_of(tmp_path, selector_policy(match_args(op, ["a" * (limit + 1)]), args))
        assert f"values[0]: string is longer than {limit}" in msg, msg


def test_match_args_per_selector_limit(tmp_path):
    args = "".join(f"    - index: {i}\n      type: int\n" for i in range(5))
    one = "".join(f"      - index: {i}\n        operator: Equal\n        values: [\"1\"]\n" for i in range(5))
    [ok] = load_text(tmp_path, selector_policy("    - matchArgs:\n" + one, args))
    assert not isinstance(ok, PolicyError), ok
    six = one + "      - index: 0\n        operator: Equal\n        values: [\"2\"]\n"
    assert "supports up to 5 filters" in error_of(tmp_path, selector_policy("    - matchArgs:\n" + six, args))


@pytest.mark.parametrize("selector, reason", [
    ("    - matchActions:\n      - action: GetUrl\n", "action GetUrl is not supported"),
    ("    - matchArgs:\n      - index: 3\n        operator: Equal\n        values: [\"1\"]\n", "index 3 is not among"),
    ("    - matchArgs:\n      - index: 0\n        operator: Prefix\n        values: [\"1\"]\n",
     "operator Prefix is not supported for a int argument"),
    ("    - matchArgs:\n      - index: 0\n        operator: Equal\n        values: [\"x1\"]\n", "'x1' is not an integer"),
    ("    - matchActions:\n      - action: NoPost\n        rateLimit: 1m\n", "rate limiting can only be applied to Post"),
    ("    - matchActions:\n      - action: Post\n        rateLimit: often\n", "rateLimit 'often' is invalid"),
    ("    - matchNamespaces:\n      - namespace: Pid\n        operator: In\n        values: [\"1\",\"2\",\"3\",\"4\",\"5\"]\n",
     "supports up to 4 values"),
    ("    - matchReturnActions:\n      - action: Post\n", "matchReturnActions is not supported"),
    ("    - matchBinaries:\n      - operator: Prefix\n        followChildren: true\n        values: [\"/bin/\"]\n",
     "followChildren works with the operators In and NotIn, not 'Prefix'"),
])
def test_selector_errors(tmp_path, selector, reason):
    msg = error_of(tmp_path, selector_policy(selector))
    assert reason in msg, msg


def test_follow_children_sections_limit(tmp_path):
    both = ("    - matchBinaries:\n      - operator: In\n        followChildren: true\n        values: [\"/bin/sh\"]\n"
            "      matchParentBinaries:\n      - operator: NotIn\n        followChildren: true\n"
            "        values: [\"/bin/sh\"]\n")
    hook = "  - call: sys_getpgid\n    syscall: true\n    args:\n    - index: 0\n      type: int\n    selectors:\n"
    ok = with_spec("  kprobes:\n" + (hook + both * 5) * 6 + hook + both)   # 62 sections
    [policy] = load_text(tmp_path, ok)
    assert not isinstance(policy, PolicyError), policy
    msg = error_of(tmp_path, with_spec("  kprobes:\n" + (hook + both * 5) * 7))   # 70
    assert "spec.kprobes[6].selectors[2].matchBinaries[0].followChildren: 70 matchBinaries/" \
           "matchParentBinaries with followChildren; tetrad supports at most 64 per policy" in msg, msg


def test_unsupported_sections_are_named(tmp_path):
    msg = error_of(tmp_path, with_spec("  usdts:\n  - path: /bin/sh\n    provider: p\n    name: n\n"))
    assert "spec.usdts: USDT probes (usdts) are not supported" in msg


@pytest.mark.parametrize("hooks, field, reason", [
    ("  - hook: file_open\n  - hook: file_open\n", "spec.lsmhooks[1].hook",
     "'file_open' is already hooked by spec.lsmhooks[0]"),
    ("  - hook: File-Open\n", "spec.lsmhooks[0].hook", "is not an LSM hook name"),
    ("".join(f"  - hook: h{i}\n" for i in range(5)), "spec.lsmhooks", "tetrad loads at most 4"),
])
def test_lsmhooks_errors(tmp_path, hooks, field, reason):
    msg = error_of(tmp_path, with_spec("  lsmhooks:\n" + hooks))
    assert f"{field}: " in msg and reason in msg, msg


# -- the corpus: Tetragon's own examples ---------------------------------------

# Outcome of every example on a kernel without kprobes (this machine's kind).
# README.md ("Tetragon's example policies") shows the same tally.
CORPUS_TALLY = {
    "loaded": 19,
    "argument type not supported": 18,
    "kprobe without kprobes and no tracepoint equivalent": 8,
    "Override needs bpf_override_return or BPF LSM": 5,
    "lists not supported": 4,
    "returnArgAction not supported": 4,
    "lsmhooks need BPF LSM": 1,
    "argument resolve not supported": 1,
    "action GetUrl/DnsLookup not supported": 2,
    "USDT not supported": 2,
    "matchCapabilityChanges/isNamespaceCapability not supported": 2,
    "uprobe target binary missing": 2,
    "enforcers not supported": 1,
    "loader sensor not supported": 1,
    "raw tracepoints not supported": 1,
}

_REASONS = [
    (r"argument type .* is not supported", "argument type not supported"),
    (r"no kprobe: .*; no tracepoint: no tracepoint equivalent of", "kprobe without kprobes and no tracepoint equivalent"),
    (r"Override on .* cannot be honoured here: no override_return: .*; no bpf_lsm: ",
     "Override needs bpf_override_return or BPF LSM"),
    (r"cannot be (decided|enforced)", "enforcing selector not decidable by cgroup BPF"),
    (r"spec\.lists", "lists not supported"),
    (r"lsmhooks\[\d+\]\.hook: lsmhook .*: BPF LSM unavailable", "lsmhooks need BPF LSM"),
    (r"returnArgAction", "returnArgAction not supported"),
    (r"argument resolve is not supported", "argument resolve not supported"),
    (r"action (GetUrl|DnsLookup)", "action GetUrl/DnsLookup not supported"),
    (r"usdts", "USDT not supported"),
    (r"matchCapabilityChanges|isNamespaceCapability", "matchCapabilityChanges/isNamespaceCapability not supported"),
    (r"enforcers", "enforcers not supported"),
    (r"spec\.loader", "loader sensor not supported"),
    (r"raw tracepoints", "raw tracepoints not supported"),
    (r"uprobe .* does not exist", "uprobe target binary missing"),
]


def corpus_outcomes(features) -> dict[str, str]:
    """example file -> "loaded" or the reason it was rejected."""
    out = {}
    results = []
    for path in sorted(EXAMPLES.rglob("*.y*ml")):   # some examples sit two levels deep
        results += loader.load_file(path, str(path.relative_to(EXAMPLES)))
    for r in results:
        if isinstance(r, PolicyError):
            out[r.file] = str(r)
            continue
        try:
            manager.prepare(r, features, manager.policy_mode(r))   # as the daemon does
            out[r.file] = "loaded"
        except (hooks.PlanError, EnforcementError) as e:
            out[r.file] = f"{r.where}: {e}"
    return out


def test_corpus_every_example_loads_or_names_what_is_missing():
    f = features_mod.detect(quick=True)
    # the tally is for a kernel like ours: no kprobes, BPF LSM refused, no override
    f.kprobes = f.kretprobes = f.fentry = f.bpf_lsm = f.override_return = False
    outcomes = corpus_outcomes(f)
    assert len(outcomes) == len(list(EXAMPLES.rglob("*.y*ml")))
    tally = collections.Counter()
    for file, outcome in outcomes.items():
        if outcome == "loaded":
            tally["loaded"] += 1
            continue
        for pattern, label in _REASONS:
            if re.search(pattern, outcome):
                tally[label] += 1
                break
        else:
            raise AssertionError(f"{file}: rejected without naming a missing feature: {outcome}")
    assert dict(tally) == CORPUS_TALLY


@pytest.mark.parametrize("key, entry, limit", [
    ("matchPIDs", "      - operator: In\n        values: [1]\n", validate.MAX_PID_FILTERS),
    ("matchBinaries", "      - operator: In\n        values: [\"/bin/sh\"]\n", validate.MAX_BINARY_ENTRIES),
    ("matchCapabilities", "      - type: Effective\n        operator: In\n        values: [\"CAP_SYS_ADMIN\"]\n",
     validate.MAX_CAP_FILTERS),
])
def test_tetrad_selector_entry_limits_at_and_over(tmp_path, key, entry, limit):
    [ok] = load_text(tmp_path, selector_policy(f"    - {key}:\n" + entry * limit))
    assert not isinstance(ok, PolicyError), ok
    msg = error_of(tmp_path, selector_policy(f"    - {key}:\n" + entry * (limit + 1)))
    # Tetragon's schema already allows one matchBinaries entry (maxItems 1)
    assert f"spec.kprobes[0].selectors[0].{key}: " in msg and (
        f"up to {limit} " in msg or f"at most {limit} items" in msg), msg


def test_hooks_per_policy_limit(tmp_path):
    one = "  - call: sys_x\n    syscall: true\n"
    [ok] = load_text(tmp_path, with_spec("  kprobes:\n" + one * validate.MAX_HOOKS))
    assert not isinstance(ok, PolicyError), ok
    msg = error_of(tmp_path, with_spec("  kprobes:\n" + one * (validate.MAX_HOOKS + 1)))
    assert "p.yaml[0]: spec: 17 hooks; tetrad loads at most 16" in msg, msg


def test_equal_string_limit(tmp_path):
    args = "    - index: 0\n      type: string\n"
    [ok] = load_text(tmp_path, selector_policy(match_args("Equal", ["a" * 255]), args))
    assert not isinstance(ok, PolicyError), ok
    assert "string is longer than 255" in error_of(tmp_path, selector_policy(match_args("Equal", ["a" * 256]), args))


def test_hook_backend_flag_forces_the_engine_unless_the_policy_says_otherwise():
    f = features_mod.detect(quick=True)
    f.kprobes = f.kretprobes = f.fentry = False
    f.notes["fentry"] = "fentry refused here"
    [policy] = loader.load_file(REPO_EXAMPLES / "sys_read_follow_prefix.yaml", "sys_read_follow_prefix.yaml")
    _, plans, _, _, _ = manager.prepare(policy, f, default_backend="tracepoint")
    assert {p.backend for p in plans} <= {"syscall-tracepoints", "tracepoint-equivalent"}
    with pytest.raises(hooks.PlanError, match="hook-backend=kprobe forced, but "):
        manager.prepare(policy, f, default_backend="kprobe")
    with pytest.raises(hooks.PlanError, match='kprobe "fd_install": hook-backend=fentry forced, but fentry refused here'):
        manager.prepare(policy, f, default_backend="fentry")
    f.fentry = True   # a kernel with BPF trampolines: the flag is obeyed
    _, plans, _, _, _ = manager.prepare(policy, f, default_backend="fentry")
    assert [p.describe() for p in plans] == ["fentry (fentry fd_install)", "fentry (fentry __x64_sys_close)",
                                             "fentry (fexit __x64_sys_read)", "fentry (fentry __x64_sys_write)"]
