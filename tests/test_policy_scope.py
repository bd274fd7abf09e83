"""Which pods and containers a policy's scope selects (tetrad/policy/scope.py),
and how selectors are validated: Kubernetes label-selector semantics, as
Tetragon applies them to namespaced policies, podSelector and containerSelector."""

from __future__ import annotations

import pytest

from tetrad.policy import loader
from tetrad.policy.loader import PolicyError
from tetrad.policy.scope import LabelSelector, Workload, image_repo, scope_of

XWING = Workload(101, "default", {"app": "xwing", "class": "xwing", "org": "alliance"},
                 "spaceship", "docker.io/tetrad-test/busybox:1.35")
YWING = Workload(102, "rebels", {"app": "ywing"}, "gunner", "quay.io/rebels/ywing@sha256:12ab")
TIE = Workload(103, "empire", {"app": "tie", "org": "empire"}, "spaceship", "tie:latest")
ALL = [XWING, YWING, TIE]


def selected(kind="TracingPolicy", namespace="", **spec) -> set[int]:
    scope = scope_of(kind, namespace, spec)
    assert scope is not None
    return scope.cgroup_ids(ALL)


def test_a_policy_without_selectors_is_not_scoped():
    assert scope_of("TracingPolicy", "", {"kprobes": []}) is None


def test_a_namespaced_policy_selects_the_pods_of_its_namespace_only():
    assert selected("TracingPolicyNamespaced", "rebels") == {102}
    assert selected("TracingPolicyNamespaced", "rebels", podSelector={"matchLabels": {"app": "xwing"}}) == set()


@pytest.mark.parametrize("selector, expected", [
    ({}, {101, 102, 103}),                                           # {}: every pod
    ({"matchLabels": {"app": "xwing"}}, {101}),
    ({"matchLabels": {"app": "xwing", "org": "empire"}}, set()),     # labels are ANDed
    ({"matchExpressions": [{"key": "org", "operator": "In", "values": ["alliance", "empire"]}]}, {101, 103}),
    ({"matchExpressions": [{"key": "org", "operator": "NotIn", "values": ["empire"]}]}, {101, 102}),  # absent key: NotIn holds
    ({"matchExpressions": [{"key": "org", "operator": "Exists"}]}, {101, 103}),
    ({"matchExpressions": [{"key": "org", "operator": "DoesNotExist"}]}, {102}),
    ({"matchLabels": {"org": "alliance"},
      "matchExpressions": [{"key": "app", "operator": "In", "values": ["tie"]}]}, set()),
    # Tetragon's label for the pod's namespace
    ({"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In",
                            "values": ["empire"]}]}, {103}),
])
def test_pod_selector(selector, expected):
    assert selected(podSelector=selector) == expected


@pytest.mark.parametrize("selector, expected", [
    ({"matchLabels": {"name": "spaceship"}}, {101, 103}),
    ({"matchExpressions": [{"key": "name", "operator": "NotIn", "values": ["spaceship"]}]}, {102}),
    ({"matchLabels": {"repo": "quay.io/rebels/ywing"}}, {102}),
    ({"matchLabels": {"repo": "docker.io/tetrad-test/busybox"}}, {101}),
])
def test_container_selector_alone_applies_to_containers_of_every_pod(selector, expected):
    assert selected(containerSelector=selector) == expected


def test_container_selector_filters_the_pods_the_pod_selector_chose():
    assert selected(podSelector={"matchLabels": {"org": "empire"}},
                    containerSelector={"matchLabels": {"name": "spaceship"}}) == {103}


def test_containers_without_a_known_cgroup_are_never_selected():
    scope = scope_of("TracingPolicy", "", {"podSelector": {}})
    assert scope.cgroup_ids([Workload(0, "default", {}, "x", "")]) == set()


def test_image_repo():
    assert image_repo("docker.io/library/nginx:1.25") == "docker.io/library/nginx"
    assert image_repo("localhost:5000/app@sha256:abcd") == "localhost:5000/app"
    assert image_repo("localhost:5000/app") == "localhost:5000/app"
    assert image_repo("busybox") == "busybox"


def test_label_selector_requirements_are_sorted_and_typed():
    sel = LabelSelector.from_spec({"matchLabels": {"b": "1", "a": 2}})
    assert sel.requirements == (("a", "In", ("2",)), ("b", "In", ("1",)))
    assert sel.matches({"a": "2", "b": "1", "c": "x"}) and not sel.matches({"a": "2"})


POLICY = """apiVersion: cilium.io/v1alpha1
kind: {kind}
metadata:
  name: scoped
{namespace}spec:
{selectors}  tracepoints:
  - subsystem: syscalls
    event: sys_enter_getppid
"""


def load(tmp_path, kind="TracingPolicy", namespace="", selectors=""):
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.format(kind=kind, namespace=namespace, selectors=selectors))
    (result,) = loader.load_file(path)
    return result


@pytest.mark.parametrize("selectors, error", [
    ("  podSelector:\n    matchExpressions:\n    - key: app\n      operator: In\n",
     "p.yaml[0]: spec.podSelector.matchExpressions[0].values: operator In needs at least one value"),
    ("  podSelector:\n    matchExpressions:\n    - key: app\n      operator: Exists\n      values: [x]\n",
     "p.yaml[0]: spec.podSelector.matchExpressions[0].values: operator Exists takes no values"),
    ("  podSelector:\n    matchExpressions:\n    - key: app\n      operator: Near\n      values: [x]\n",
     "p.yaml[0]: spec.podSelector.matchExpressions[0].operator:"),
    ("  containerSelector:\n    matchLabels:\n      image: nginx\n",
     "p.yaml[0]: spec.containerSelector.matchLabels.image: unknown field 'image' (one of name, repo)"),
])
def test_bad_selectors_are_rejected_naming_the_field(tmp_path, selectors, error):
    result = load(tmp_path, selectors=selectors)
    assert isinstance(result, PolicyError)
    assert str(result).startswith(error), str(result)


def test_selectors_load(tmp_path):
    result = load(tmp_path, selectors="  podSelector:\n    matchLabels:\n      app: xwing\n"
                                      "  containerSelector:\n    matchLabels:\n      name: spaceship\n")
    assert not isinstance(result, PolicyError), str(result)
    scope = scope_of(result.kind, result.namespace, result.spec)
    assert scope.cgroup_ids(ALL) == {101}
    assert scope.describe() == "pods app In xwing; containers name In spaceship"


def test_a_namespaced_policy_needs_its_namespace(tmp_path):
    result = load(tmp_path, kind="TracingPolicyNamespaced")
    assert str(result) == ("p.yaml[0]: metadata.namespace: required for a TracingPolicyNamespaced "
                           "(the namespace whose pods it applies to)")
    result = load(tmp_path, kind="TracingPolicyNamespaced", namespace="  namespace: rebels\n")
    assert scope_of(result.kind, result.namespace, result.spec).describe() == "namespace rebels"


def test_a_whole_pod_scope_holds_the_pods_cgroup_a_container_scope_does_not():
    sandbox = Workload(201, "default", {"app": "xwing"}, "", "pause", pod_cgroup_id=200, sandbox=True)
    app = Workload(202, "default", {"app": "xwing"}, "spaceship", "busybox", pod_cgroup_id=200)
    other = Workload(302, "default", {"app": "tie"}, "spaceship", "busybox", pod_cgroup_id=300)
    pods = scope_of("TracingPolicy", "", {"podSelector": {"matchLabels": {"app": "xwing"}}})
    # known from the sandbox alone: containers created in the pod later are covered at once
    assert pods.cgroup_ids([sandbox]) == {200}
    assert pods.cgroup_ids([sandbox, app, other]) == {200, 202}
    containers = scope_of("TracingPolicy", "", {"podSelector": {"matchLabels": {"app": "xwing"}},
                                               "containerSelector": {"matchLabels": {"name": "spaceship"}}})
    assert containers.cgroup_ids([sandbox, app, other]) == {202}
    assert not containers.selects(sandbox)
