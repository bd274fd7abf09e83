"""Which workloads a policy applies to: Tetragon's namespaced policies,
`spec.podSelector` and `spec.containerSelector`.

A scoped policy applies only to processes in the containers it selects, and
the kernel decides that: the daemon turns the selection into a set of cgroup
v2 ids (`cgroup_ids`), which bpf/policy.c and bpf/enforce_cgroup.c consult
before anything else; a process is in scope when its cgroup or one of its
ancestors is in the set.  A scope that selects whole pods (no
containerSelector) holds the pods' own cgroups, known from their sandboxes, so
a container created in the pod later is covered from its first instruction;
one that selects containers holds theirs, known when containerd creates their
task (scope_window benchmark: before their program starts, by a few ms).  The selection follows
Tetragon (pkg/sensors/k8s.go, pkg/labels):

- a TracingPolicyNamespaced selects only pods of its namespace (every pod of
  it when it has no selector);
- a podSelector selects pods by their labels, with Kubernetes label-selector
  semantics (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist; `{}`
  selects every pod); the pod's namespace is also the label
  `k8s:io.kubernetes.pod.namespace`;
- a containerSelector then selects containers of those pods by the fields
  `name` (the container's name) and `repo` (its image without tag or digest);
- a scoped policy never applies to host processes.  (Unlike Tetragon, a
  pod-wide scope also covers the pod's sandbox, whose pause process does
  nothing a policy would see.)

Without a selector and outside a namespace a policy is not scoped (None):
every process.  A scoped policy whose containers are not known (containerd
down, no Kubernetes API) matches nothing rather than everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
CONTAINER_FIELDS = ("name", "repo")


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; `requirements` are (key, operator, values)."""
    requirements: tuple = ()

    @classmethod
    def from_spec(cls, spec: dict | None) -> "LabelSelector":
        reqs = [(k, "In", (str(v),)) for k, v in sorted((spec or {}).get("matchLabels", {}).items())]
        for e in (spec or {}).get("matchExpressions") or ():
            reqs.append((e["key"], e["operator"], tuple(str(v) for v in e.get("values") or ())))
        return cls(tuple(reqs))

    def matches(self, labels: dict) -> bool:
        for key, op, values in self.requirements:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


def check_selector(spec, path: str, keys: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """Errors of one selector as (field path, reason), as Kubernetes reports them."""
    errors = []
    if not isinstance(spec, dict):
        return [(path, "expected an object with matchLabels and/or matchExpressions")]
    for key in spec.get("matchLabels") or {}:
        if keys is not None and key not in keys:
            errors.append((f"{path}.matchLabels.{key}", f"unknown field {key!r} (one of {', '.join(keys)})"))
    for i, e in enumerate(spec.get("matchExpressions") or ()):
        where = f"{path}.matchExpressions[{i}]"
        op, values = e.get("operator"), e.get("values") or []
        if op not in OPERATORS:
            errors.append((f"{where}.operator", f"unknown operator {op!r} ({', '.join(OPERATORS)})"))
        elif op in ("In", "NotIn") and not values:
            errors.append((f"{where}.values", f"operator {op} needs at least one value"))
        elif op in ("Exists", "DoesNotExist") and values:
            errors.append((f"{where}.values", f"operator {op} takes no values"))
        if keys is not None and e.get("key") not in keys:
            errors.append((f"{where}.key", f"unknown field {e.get('key')!r} (one of {', '.join(keys)})"))
    return errors


def image_repo(image: str) -> str:
    """An image reference without its tag or digest: docker.io/library/nginx."""
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[:len(repo) - len(last)] + last.split(":", 1)[0]
    return repo


@dataclass(frozen=True)
class Workload:
    """What the selectors look at, for one container of a pod with its cgroups."""
    cgroup_id: int
    pod_namespace: str
    pod_labels: dict = field(hash=False, compare=False, default_factory=dict)
    container_name: str = ""
    image: str = ""
    pod_cgroup_id: int = 0          # the pod's own cgroup (kubelet's layouts), 0 if none
    sandbox: bool = False           # the pod's sandbox: its pod cgroup counts, not itself


@dataclass(frozen=True)
class Scope:
    namespace: str                 # "" = every namespace
    pods: LabelSelector
    containers: LabelSelector

    def selects_pod(self, w: Workload) -> bool:
        if self.namespace and w.pod_namespace != self.namespace:
            return False
        labels = dict(w.pod_labels)
        labels.setdefault(NAMESPACE_LABEL, w.pod_namespace)
        return self.pods.matches(labels)

    def selects(self, w: Workload) -> bool:
        return (not w.sandbox and self.selects_pod(w) and
                self.containers.matches({"name": w.container_name, "repo": image_repo(w.image)}))

    def cgroup_ids(self, workloads) -> set[int]:
        whole_pods = not self.containers.requirements
        ids = set()
        for w in workloads:
            if whole_pods and w.pod_cgroup_id and self.selects_pod(w):
                ids.add(w.pod_cgroup_id)
            if w.cgroup_id and self.selects(w):
                ids.add(w.cgroup_id)
        return ids

    def describe(self) -> str:
        parts = [f"namespace {self.namespace}"] if self.namespace else []
        for what, sel in (("pods", self.pods), ("containers", self.containers)):
            if sel.requirements:
                parts.append(f"{what} " + ", ".join(
                    f"{k} {op} {','.join(v)}" if v else f"{k} {op}" for k, op, v in sel.requirements))
        return "; ".join(parts) or "every container of every pod"


def scope_of(kind: str, namespace: str, spec: dict) -> Scope | None:
    """The policy's scope, or None when it applies to every process."""
    pods, containers = spec.get("podSelector"), spec.get("containerSelector")
    namespaced = kind == "TracingPolicyNamespaced"
    if pods is None and containers is None and not namespaced:
        return None
    return Scope(namespace if namespaced else "", LabelSelector.from_spec(pods),
                 LabelSelector.from_spec(containers))
