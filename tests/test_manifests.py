"""The Kubernetes deployment files: every manifest is valid against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are
errors), the DaemonSet's flags are ones `tetrad run` accepts and agree with
its volumes, and the CRDs and RBAC cover exactly what Kubernetes mode reads.
The Helm chart is checked for consistency with them (its templates are not
rendered here: no Helm binary can be installed on these machines)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tetrad import config as config_mod
from tetrad.__main__ import build_parser
from tetrad.containers.k8s import POLICY_GROUP, POLICY_PLURALS, POLICY_VERSION

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "packaging" / "kubernetes"
CHART = REPO / "packaging" / "helm" / "tetrad"
K8S_VERSION = "1.30.0"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kind-config.yaml":
            continue    # a Kind cluster configuration, not a Kubernetes object
        out += [(f"{path.name}:{d['kind']}/{d['metadata']['name']}", d) for d in documents(path)]
    return out


@pytest.mark.parametrize("name,doc", all_manifests(), ids=[n for n, _ in all_manifests()])
def test_manifest_is_valid_against_the_kubernetes_schemas(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_does_reject_a_bad_manifest():
    (ds,) = documents(MANIFESTS / "daemonset.yaml")
    ds["spec"]["template"]["spec"]["hostPid"] = True     # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def daemonset() -> dict:
    (ds,) = documents(MANIFESTS / "daemonset.yaml")
    return ds


def test_daemonset_flags_are_accepted_by_tetrad_run_and_match_its_volumes():
    pod = daemonset()["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    containers = {c["name"]: c for c in pod["containers"]}
    tetrad = containers["tetrad"]
    args = build_parser().parse_args(tetrad["args"])
    cfg = config_mod.load(args, env={}, config_file="/nonexistent", dropin_dir="/nonexistent")
    mounts = {m["mountPath"]: m["name"] for m in tetrad["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def host_path(container_path: str) -> str:
        return volumes[mounts[container_path]]["hostPath"]["path"]

    assert host_path(cfg.procfs) == "/proc"               # the host's /proc as --procfs
    assert host_path(cfg.containerd_address) == "/run/containerd/containerd.sock"
    assert host_path("/sys/kernel/btf") == "/sys/kernel/btf" and cfg.btf.startswith("/sys/kernel/btf/")
    assert host_path("/sys/kernel/tracing") == "/sys/kernel/tracing"
    assert cfg.enable_k8s_api is True
    env = {e["name"]: e for e in tetrad["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # export-stdout prints the file tetrad writes, through the shared volume
    export_dir = str(Path(cfg.export_filename).parent)
    stdout = containers["export-stdout"]
    assert mounts[export_dir] in {m["name"] for m in stdout["volumeMounts"]}
    assert cfg.export_filename in " ".join(stdout["command"])


def test_crds_and_rbac_cover_what_kubernetes_mode_watches():
    crds = {d["spec"]["names"]["plural"]: d for d in documents(MANIFESTS / "crds.yaml")}
    assert set(crds) == set(POLICY_PLURALS)
    for plural, crd in crds.items():
        assert crd["spec"]["group"] == POLICY_GROUP
        assert [v["name"] for v in crd["spec"]["versions"]] == [POLICY_VERSION]
    assert crds["tracingpolicies"]["spec"]["scope"] == "Cluster"
    assert crds["tracingpoliciesnamespaced"]["spec"]["scope"] == "Namespaced"
    (role,) = [d for d in documents(MANIFESTS / "rbac.yaml") if d["kind"] == "ClusterRole"]
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    for key in [("", "pods")] + [(POLICY_GROUP, p) for p in POLICY_PLURALS]:
        assert {"list", "watch"} <= granted[key], key


def test_helm_chart_is_consistent_with_the_manifests():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "tetrad"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    # the chart installs the same CRDs
    assert (CHART / "crds" / "crds.yaml").read_text() == (MANIFESTS / "crds.yaml").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["hostProcPath"] == "/proc"
    # every value a template uses is defined in values.yaml
    for template in (CHART / "templates").glob("*.yaml"):
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()):
            node = values
            for key in ref.split("."):
                assert isinstance(node, dict) and key in node, f"{template.name}: .Values.{ref}"
                node = node[key]
    # the DaemonSet template passes the same flags as the plain manifest
    text = (CHART / "templates" / "daemonset.yaml").read_text()
    for flag in daemonset()["spec"]["template"]["spec"]["containers"][0]["args"]:
        name = flag.split("=", 1)[0]
        assert name in text, name
