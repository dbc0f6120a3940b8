"""The Helm chart: lint-clean, and `helm template` renders the same objects as manifests/."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
import yaml

from specd.devcluster import binaries
from specd.operator import builders, crd

REPO = pathlib.Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "specd"
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


@pytest.fixture(scope="module")
def helm() -> pathlib.Path:
    try:
        return binaries.ensure(build=False, quiet=True) / "helm"
    except binaries.BinariesUnavailable as exc:
        pytest.skip(f"helm is not built: {exc}")


def _template(helm: pathlib.Path, *args: str) -> list[dict]:
    out = subprocess.run([str(helm), "template", "specd", str(CHART), "--namespace",
                          "specd-system", "--kube-version", "v1.33.0", "--include-crds", *args],
                         check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _key(obj: dict) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _without_helm_labels(obj: dict) -> dict:
    obj = json.loads(json.dumps(obj))
    for label in HELM_ONLY_LABELS:
        obj["metadata"].get("labels", {}).pop(label, None)
    return obj


def test_chart_lints_clean(helm: pathlib.Path) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_template_agrees_with_manifests(helm: pathlib.Path) -> None:
    rendered = {_key(o): _without_helm_labels(o) for o in _template(helm)}
    plain = {}
    for name in ("crd.yaml", "rbac.yaml", "operator.yaml"):
        for obj in yaml.safe_load_all((REPO / "manifests" / name).read_text()):
            plain[_key(obj)] = obj
    assert sorted(rendered) == sorted(plain)
    for key, obj in plain.items():
        assert rendered[key] == obj, key


def test_chart_crd_is_the_generated_one(helm: pathlib.Path) -> None:
    crds = [o for o in _template(helm) if o["kind"] == "CustomResourceDefinition"]
    assert crds == [crd.crd()]


def test_watched_namespaces_bind_the_role_per_namespace(helm: pathlib.Path) -> None:
    objects = _template(helm, "--set", "watchNamespaces={team-a,team-b}")
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert not [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-4:] == ["--namespace", "team-a", "--namespace", "team-b"]


def test_values_schema_refuses_bad_values(helm: pathlib.Path) -> None:
    result = subprocess.run([str(helm), "template", "specd", str(CHART), "--kube-version",
                             "v1.33.0", "--set", "resyncSeconds=1"], capture_output=True,
                            text=True)
    assert result.returncode != 0 and "resyncSeconds" in result.stderr


def test_image_values_are_configurable(helm: pathlib.Path) -> None:
    objects = _template(helm, "--set", "image.tag=1.2.3", "--set",
                        "workerImage.repository=registry.example/specd")
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/specd/specd-operator:1.2.3"
    assert "registry.example/specd:0.1.0" in container["args"]


def test_pod_monitor_is_rendered_where_the_prometheus_operator_is(helm: pathlib.Path) -> None:
    assert not [o for o in _template(helm) if o["kind"] == "PodMonitor"]  # no monitoring API: none
    objects = _template(helm, "--api-versions", "monitoring.coreos.com/v1/PodMonitor",
                        "--set", "metrics.podMonitor.labels.release=kube-prometheus")
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    # it selects the pods the operator makes, whose containers name their metrics port so
    children = builders.build_children(_body_for_chart(), builders.OperatorConfig())
    pods = [c["spec"]["template"] for c in children if c["kind"] == "Deployment"]
    assert len(pods) == 3
    for pod in pods:
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert any(p["name"] == "metrics" for p in pod["spec"]["containers"][0]["ports"])


def _body_for_chart() -> dict:
    """manifests/examples/demo.yaml as the API server would hand it to the operator."""
    body = yaml.safe_load((REPO / "manifests" / "examples" / "demo.yaml").read_text())
    body["metadata"].update(namespace="default", uid="uid-1", generation=1)
    return body
