"""The Kubernetes deployment files: every manifest is valid against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are
errors), the DaemonSet's flags are ones `tetrad run` accepts and agree with
its volumes, and the CRDs and RBAC cover exactly what Kubernetes mode reads.
The Helm chart is rendered for real, with default and non-default values, by
scripts/helm-render (Helm's template engine: Go's text/template with Sprig,
built from Debian's Go packages, since no helm binary can be installed on
these machines); every rendered document passes the same validator, the values
reach the output, and a template error or an unknown value path fails."""

from __future__ import annotations

import os
import re
import subprocess
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


@pytest.fixture(scope="session")
def helm_render(tmp_path_factory):
    """scripts/helm-render built once, from Debian's Go packages (GOPATH mode:
    no module download is possible here)."""
    out = tmp_path_factory.mktemp("helm-render")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=str(out / "cache"), GOFLAGS="")
    subprocess.run(["go", "build", "-o", str(out / "helm-render"), "./scripts/helm-render"],
                   cwd=REPO, env=env, check=True, timeout=300)
    return out / "helm-render"


def render(helm_render, *sets: str, chart: Path = CHART, strict: bool = True) -> list[dict]:
    """`helm template` of the chart into namespace kube-system; strict as
    `helm lint --strict`: a value path the values do not have is an error."""
    cmd = [str(helm_render), "-name", "tetrad", "-namespace", "kube-system"]
    cmd += ["-strict"] if strict else []
    for s in sets:
        cmd += ["-set", s]
    out = subprocess.run(cmd + [str(chart)], capture_output=True, text=True, check=True).stdout
    assert out.startswith("---\n# Source: tetrad/templates/")
    return [d for d in yaml.safe_load_all(out) if d]


def rendered_daemonset(docs: list[dict]) -> dict:
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


NON_DEFAULT = ["hostProcPath=/procHost", "enableK8sApi=false", "exportStdout.enabled=false",
               "containerdSocket=/run/k3s/containerd/containerd.sock",
               "exportDirectory=/var/log/tetrad", "image.tag=0.1.0",
               "nodeSelector.kubernetes\\.io/os=linux", "rbac.create=false",
               "serviceAccount.create=false", "serviceAccount.name=node-agent"]


@pytest.mark.parametrize("sets", [[], ["hostProcPath=/procHost"], NON_DEFAULT],
                         ids=["defaults", "kind", "non-default"])
def test_rendered_chart_is_valid_against_the_kubernetes_schemas(helm_render, sets):
    docs = render(helm_render, *sets)
    kinds = sorted(d["kind"] for d in docs)
    if "rbac.create=false" in sets:
        assert kinds == ["DaemonSet"]
    else:
        assert kinds == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def tetrad_config(pod: dict):
    (tetrad,) = [c for c in pod["containers"] if c["name"] == "tetrad"]
    args = build_parser().parse_args(tetrad["args"])
    return config_mod.load(args, env={}, config_file="/nonexistent", dropin_dir="/nonexistent")


def test_rendered_chart_with_defaults_configures_tetrad_like_the_manifest(helm_render):
    pod = rendered_daemonset(render(helm_render))["spec"]["template"]["spec"]
    manifest = daemonset()["spec"]["template"]["spec"]
    assert tetrad_config(pod).as_dict() == tetrad_config(manifest).as_dict()
    assert {c["name"] for c in pod["containers"]} == {"tetrad", "export-stdout"}


def test_rendered_chart_carries_the_values_into_the_daemonset(helm_render):
    ds = rendered_daemonset(render(helm_render, *NON_DEFAULT))
    assert ds["metadata"]["namespace"] == "kube-system" and ds["metadata"]["name"] == "tetrad"
    pod = ds["spec"]["template"]["spec"]
    cfg = tetrad_config(pod)
    (tetrad,) = pod["containers"]                   # exportStdout.enabled=false
    mounts = {m["mountPath"]: m["name"] for m in tetrad["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def host_path(container_path: str) -> str:
        return volumes[mounts[container_path]]["hostPath"]["path"]

    # hostProcPath is the node's directory behind the --procfs argument
    assert host_path(cfg.procfs) == "/procHost"
    assert cfg.containerd_address == "/run/k3s/containerd/containerd.sock"
    assert host_path(cfg.containerd_address) == cfg.containerd_address
    assert cfg.export_filename == "/var/log/tetrad/tetrad.log"
    assert host_path("/var/log/tetrad") == "/var/log/tetrad"
    assert cfg.enable_k8s_api is False
    assert tetrad["image"] == "tetrad:0.1.0"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["serviceAccountName"] == "node-agent"


def broken_chart(tmp_path: Path, template: str) -> Path:
    chart = tmp_path / "tetrad"
    (chart / "templates").mkdir(parents=True)
    for name in ("Chart.yaml", "values.yaml"):
        (chart / name).write_text((CHART / name).read_text())
    for path in (CHART / "templates").iterdir():
        (chart / "templates" / path.name).write_text(path.read_text())
    (chart / "templates" / "broken.yaml").write_text(template)
    return chart


def test_rendering_fails_on_an_unknown_value_path(helm_render, tmp_path):
    chart = broken_chart(tmp_path, "data: {{ .Values.hostProcPth }}\n")
    with pytest.raises(subprocess.CalledProcessError) as err:
        render(helm_render, chart=chart)
    assert "broken.yaml" in err.value.stderr and "hostProcPth" in err.value.stderr


def test_rendering_fails_on_a_template_error(helm_render, tmp_path):
    chart = broken_chart(tmp_path, "{{- if .Values.rbac.create }}\nkind: Role\n")
    with pytest.raises(subprocess.CalledProcessError) as err:
        render(helm_render, chart=chart, strict=False)
    assert "broken.yaml" in err.value.stderr
    chart = broken_chart(tmp_path / "2", "a: {{ .Values.missing.key }}\n")
    with pytest.raises(subprocess.CalledProcessError) as err:
        render(helm_render, chart=chart, strict=False)   # Helm's nil pointer error too
    assert "missing.key" in err.value.stderr
