"""The CRD module: generated files up to date, schema shape, defaulting, printer columns."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from specd import contract as c
from specd.operator import crd

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", crd.OUTPUTS, ids=lambda p: str(p.relative_to(REPO)))
def test_generated_crd_files_are_up_to_date(path: pathlib.Path) -> None:
    assert path.read_text() == crd.render(), (
        f"{path} is stale: run python -m specd.operator.crd --write")


def _schema() -> dict:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_names_scope_and_subresources() -> None:
    spec = crd.crd()["spec"]
    assert crd.crd()["metadata"]["name"] == "specdecodingservices.specd.io"
    assert spec["names"]["shortNames"] == ["sds"]
    assert spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.target.replicas"


def test_printer_columns_cover_the_useful_figures() -> None:
    columns = {c["name"]: c for c in crd.crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    for name in ("Ready", "Target", "Draft", "Method", "Acceptance", "Scaling", "Age"):
        assert name in columns and "priority" not in columns[name], name
    # replicas as the Deployments have them: the spec's are ignored while autoscaling is on
    assert columns["Target"]["jsonPath"] == ".status.target.desiredReplicas"
    assert columns["Draft"]["jsonPath"] == ".status.draft.desiredReplicas"
    assert columns["Method"]["jsonPath"] == ".spec.draft.method"
    assert columns["Scaling"]["jsonPath"] == '.status.conditions[?(@.type=="Autoscaling")].reason'


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    """Every node has a type (or is int-or-string / preserve-unknown), as structural requires."""
    for path, node in _walk(_schema()):
        assert ("type" in node or node.get("x-kubernetes-int-or-string")
                or node.get("x-kubernetes-preserve-unknown-fields")), path


def test_cross_field_rules_are_cel_validations() -> None:
    rules = [r["rule"] for _, node in _walk(_schema())
             for r in node.get("x-kubernetes-validations", [])]
    assert "self.k <= self.maxK" in rules
    assert "self.draft.method != 'model' || has(self.draft.model)" in rules
    assert "self.draft.method != 'none' || self.scheduling.speculation.mode == 'none'" in rules
    assert "self in [1, 2, 4, 8, 16, 32, 64]" in rules  # tensorParallelSize: a power of two
    assert rules.count("self.minReplicas <= self.maxReplicas") == 2  # autoscaling target, draft


def test_autoscaling_is_off_by_default_with_the_contracts_bounds() -> None:
    autoscaling = crd.apply_defaults({"target": {"model": {"uri": "/m"}}})["autoscaling"]
    assert autoscaling == {
        "enabled": False,
        "scaleUpWindowSeconds": c.AUTOSCALE_SCALE_UP_WINDOW_SECONDS.default,
        "scaleDownWindowSeconds": c.AUTOSCALE_SCALE_DOWN_WINDOW_SECONDS.default,
        "target": {"minReplicas": c.AUTOSCALE_TARGET_MIN_REPLICAS.default,
                   "maxReplicas": c.AUTOSCALE_TARGET_MAX_REPLICAS.default,
                   "queuePerReplica": c.AUTOSCALE_QUEUE_PER_TARGET.default,
                   "ttftSeconds": c.AUTOSCALE_TTFT_SECONDS.default},
        "draft": {"minReplicas": c.AUTOSCALE_DRAFT_MIN_REPLICAS.default,
                  "maxReplicas": c.AUTOSCALE_DRAFT_MAX_REPLICAS.default,
                  "utilisation": c.AUTOSCALE_DRAFT_UTILISATION.default}}
    node = _schema()["properties"]["spec"]["properties"]["autoscaling"]["properties"]
    utilisation = node["draft"]["properties"]["utilisation"]
    assert (utilisation["type"], utilisation["minimum"], utilisation["maximum"]) == (
        "number", c.AUTOSCALE_DRAFT_UTILISATION.minimum, c.AUTOSCALE_DRAFT_UTILISATION.maximum)
    assert node["target"]["properties"]["maxReplicas"]["maximum"] == (
        c.AUTOSCALE_TARGET_MAX_REPLICAS.maximum)


def test_status_keeps_the_autoscalers_decision_and_desired_replicas() -> None:
    status = _schema()["properties"]["status"]["properties"]
    assert set(status["autoscaling"]["properties"]) == {
        "targetReplicas", "draftReplicas", "reason", "message", "lastScaleTime"}
    for role in ("target", "draft", "router"):
        assert "desiredReplicas" in status[role]["properties"]


def test_apply_defaults_fills_nested_defaults_like_the_api_server() -> None:
    spec = crd.apply_defaults({"target": {"model": {"uri": "/m"}}})
    assert spec["target"]["replicas"] == 1 and spec["target"]["tensorParallelSize"] == 1
    assert spec["draft"]["method"] == "model"
    assert spec["scheduling"]["speculation"] == {"mode": "goodput", "k": 4, "maxK": 8}
    assert spec["router"]["service"] == {"type": "ClusterIP", "port": 50051, "httpPort": 8000}
    assert "model" not in spec["draft"]  # objects without a default stay absent


def test_apply_defaults_keeps_given_values_and_does_not_mutate() -> None:
    given = {"target": {"model": {"uri": "/m"}, "replicas": 3},
             "scheduling": {"speculation": {"k": 2}}}
    spec = crd.apply_defaults(given)
    assert spec["target"]["replicas"] == 3
    assert spec["scheduling"]["speculation"] == {"mode": "goodput", "k": 2, "maxK": 8}
    assert "draft" not in given


def test_rendered_yaml_round_trips() -> None:
    text = crd.render()
    assert text.startswith("# Generated by")
    assert yaml.safe_load(text) == crd.crd()
