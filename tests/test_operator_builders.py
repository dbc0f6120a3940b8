"""The pure builders: every child of a SpecDecodingService from its spec."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from specd.errors import SpecdError
from specd.operator import builders, names
from specd.operator.model import parse_model_uri

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIG = builders.OperatorConfig(image="registry.example/specd:test")


def _body(spec: dict, name: str = "svc") -> dict:
    return {"apiVersion": "specd.io/v1alpha1", "kind": "SpecDecodingService",
            "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 1},
            "spec": spec}


def _by_kind_name(children: list[dict]) -> dict[tuple[str, str], dict]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


MODEL_DRAFT = {"target": {"model": {"uri": "pvc://models/llama-70b"}, "tensorParallelSize": 8,
                          "replicas": 2, "resources": {"requests": {"memory": "400Gi"}}},
               "draft": {"method": "model", "model": {"uri": "pvc://small/llama-1b"},
                         "replicas": 4},
               "scheduling": {"speculation": {"k": 3, "maxK": 6}}}
# plain decoding: no draft pool, no draft model needed (draft.method defaults to model)
PLAIN = {"draft": {"method": "none"}, "scheduling": {"speculation": {"mode": "none"}}}


def test_model_draft_service_has_every_child_with_owner_and_labels() -> None:
    children = builders.build_children(_body(MODEL_DRAFT), CONFIG)
    assert sorted(_by_kind_name(children)) == sorted([
        ("ConfigMap", "svc-router-config"), ("ServiceAccount", "svc-router"),
        ("Role", "svc-router"), ("RoleBinding", "svc-router"),
        ("Service", "svc-target"), ("Service", "svc-draft"), ("Service", "svc-router"),
        ("Deployment", "svc-target"), ("Deployment", "svc-draft"), ("Deployment", "svc-router"),
        ("PodDisruptionBudget", "svc-target"), ("PodDisruptionBudget", "svc-draft"),
        ("PodDisruptionBudget", "svc-router")])
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["ownerReferences"] == [{
            "apiVersion": "specd.io/v1alpha1", "kind": "SpecDecodingService", "name": "svc",
            "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
        assert meta["labels"][names.LABEL_INSTANCE] == "svc"
        assert meta["labels"][names.LABEL_MANAGED_BY] == "specd-operator"
        assert child["kind"] in builders.CHILD_KINDS


def test_target_pod_runs_all_tensor_parallel_ranks_with_tp_gpus() -> None:
    target = _by_kind_name(builders.build_children(_body(MODEL_DRAFT), CONFIG))[
        ("Deployment", "svc-target")]
    assert target["spec"]["replicas"] == 2
    pod = target["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["specd", "worker", "--role", "target", "--model",
                                    "/models/llama-70b", "--port", "50061",
                                    "--tensor-parallel-size", "8", "--dtype", "auto",
                                    "--metrics-port", "9090"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert {"name": "SPECD_SERVICE", "value": "svc"} in container["env"]
    # eight ranks in one pod: a failed rank aborts NCCL instead of leaving the others blocked
    assert {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"} in container["env"]
    assert container["image"] == "registry.example/specd:test"
    assert container["resources"] == {"requests": {"memory": "400Gi"},
                                      "limits": {"nvidia.com/gpu": 8}}
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models",
                                                        "readOnly": True}} in pod["volumes"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container[
        "volumeMounts"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["readinessProbe"]["grpc"] == {"port": 50061}
    assert target["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_selectors_match_pod_labels_for_every_workload() -> None:
    children = _by_kind_name(builders.build_children(_body(MODEL_DRAFT), CONFIG))
    for role in ("target", "draft", "router"):
        deployment = children[("Deployment", f"svc-{role}")]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert children[("Service", f"svc-{role}")]["spec"]["selector"] == selector
        assert children[("PodDisruptionBudget", f"svc-{role}")]["spec"]["selector"][
            "matchLabels"] == selector
        # a role's selector must not match another role's pods
        others = [children[("Deployment", f"svc-{o}")]["spec"]["template"]["metadata"]["labels"]
                  for o in ("target", "draft", "router") if o != role]
        assert all(not selector.items() <= other.items() for other in others)


def test_draft_pool_pod() -> None:
    draft = _by_kind_name(builders.build_children(_body(MODEL_DRAFT), CONFIG))[
        ("Deployment", "svc-draft")]
    assert draft["spec"]["replicas"] == 4
    (container,) = draft["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["specd", "worker", "--role", "draft", "--model",
                                    "/models/llama-1b", "--port", "50062", "--dtype", "auto",
                                    "--metrics-port", "9090"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}


@pytest.mark.parametrize("method", ["early-exit", "hierarchical", "ngram"])
def test_drafting_inside_the_target_has_no_draft_pool(method: str) -> None:
    spec = {"target": {"model": {"uri": "/opt/model"}}, "draft": {"method": method},
            "scheduling": {"speculation": {"mode": "goodput"}}}
    children = _by_kind_name(builders.build_children(_body(spec), CONFIG))
    assert not [key for key in children if key[1] == "svc-draft"]
    (container,) = children[("Deployment", "svc-target")]["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[command.index("--draft-method") + 1] == method
    config = yaml.safe_load(children[("ConfigMap", "svc-router-config")]["data"]["router.yaml"])
    assert config["discovery"]["draftService"] is None
    assert config["speculation"]["mode"] == "goodput"


def test_plain_decoding_has_no_draft_pool_and_passes_no_draft_method() -> None:
    spec = {"target": {"model": {"uri": "/opt/model"}, "tensorParallelSize": 2}, **PLAIN}
    children = _by_kind_name(builders.build_children(_body(spec), CONFIG))
    assert not [key for key in children if key[1] == "svc-draft"]
    (container,) = children[("Deployment", "svc-target")]["spec"]["template"]["spec"][
        "containers"]
    assert "--draft-method" not in container["command"]
    assert "--model" in container["command"] and "/opt/model" in container["command"]
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    config = yaml.safe_load(children[("ConfigMap", "svc-router-config")]["data"]["router.yaml"])
    assert config["discovery"]["draftService"] is None
    assert config["speculation"]["mode"] == "none"


def test_router_config_is_the_contract_with_specd_router() -> None:
    children = _by_kind_name(builders.build_children(_body(MODEL_DRAFT), CONFIG))
    config = yaml.safe_load(children[("ConfigMap", "svc-router-config")]["data"]["router.yaml"])
    assert config == {
        "policy": "laps-sd",
        "speculation": {"mode": "goodput", "k": 3, "maxK": 6},
        "maxBatchSize": 32,
        "discovery": {"namespace": "ns", "targetService": "svc-target",
                      "draftService": "svc-draft", "targetPort": 50061, "draftPort": 50062}}
    router = children[("Deployment", "svc-router")]
    pod = router["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["specd", "router", "--config",
                                               "/etc/specd/router.yaml", "--port", "50051",
                                               "--http-port", "8000", "--metrics-port", "9090"]
    assert pod["serviceAccountName"] == "svc-router"
    assert {"name": "config", "configMap": {"name": "svc-router-config"}} in pod["volumes"]
    assert {"name": "config", "mountPath": "/etc/specd", "readOnly": True} in pod[
        "containers"][0]["volumeMounts"]


def test_router_rolls_when_its_configuration_changes() -> None:
    def config_hash(k: int) -> str:
        spec = {**MODEL_DRAFT, "scheduling": {"speculation": {"k": k, "maxK": 6}}}
        router = _by_kind_name(builders.build_children(_body(spec), CONFIG))[
            ("Deployment", "svc-router")]
        return router["spec"]["template"]["metadata"]["annotations"]["specd.io/config-hash"]

    assert config_hash(3) == config_hash(3)
    assert config_hash(3) != config_hash(5)


def test_router_discovery_role_grants_only_endpointslice_reads() -> None:
    children = _by_kind_name(builders.build_children(_body(MODEL_DRAFT), CONFIG))
    assert children[("Role", "svc-router")]["rules"] == [{
        "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"]}]
    binding = children[("RoleBinding", "svc-router")]
    assert binding["roleRef"]["name"] == "svc-router"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "svc-router",
                                    "namespace": "ns"}]


def test_worker_services_are_headless_and_router_service_follows_spec() -> None:
    spec = {**MODEL_DRAFT, "router": {"service": {"type": "NodePort", "port": 443}}}
    children = _by_kind_name(builders.build_children(_body(spec), CONFIG))
    assert children[("Service", "svc-target")]["spec"]["clusterIP"] == "None"
    assert children[("Service", "svc-draft")]["spec"]["ports"][0]["port"] == 50062
    router = children[("Service", "svc-router")]["spec"]
    assert router["type"] == "NodePort" and router["ports"][0]["port"] == 443
    assert router["ports"][0]["targetPort"] == "grpc"


def test_user_gpu_resources_are_overridden_by_tensor_parallel_size() -> None:
    spec = {"target": {"model": {"uri": "/m"}, "tensorParallelSize": 4,
                       "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "1Gi"},
                                     "requests": {"nvidia.com/gpu": 1}}}, **PLAIN}
    target = _by_kind_name(builders.build_children(_body(spec), CONFIG))[
        ("Deployment", "svc-target")]
    resources = target["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"nvidia.com/gpu": 4, "memory": "1Gi"}}


def test_spec_image_overrides_operator_default() -> None:
    spec = {"image": "mine/specd:1", "target": {"model": {"uri": "/m"}}, **PLAIN}
    for child in builders.build_children(_body(spec), CONFIG):
        if child["kind"] == "Deployment":
            assert child["spec"]["template"]["spec"]["containers"][0]["image"] == "mine/specd:1"


def test_builders_are_deterministic() -> None:
    assert builders.build_children(_body(MODEL_DRAFT), CONFIG) == builders.build_children(
        _body(MODEL_DRAFT), CONFIG)


@pytest.mark.parametrize("example", sorted((REPO / "manifests" / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_examples_build(example: pathlib.Path) -> None:
    body = yaml.safe_load(example.read_text())
    body["metadata"].update(namespace="ns", uid="u")
    children = builders.build_children(body, CONFIG)
    assert any(c["kind"] == "Deployment" for c in children)


@pytest.mark.parametrize("uri,path,claim", [
    ("pvc://models/llama/70b", "/models/llama/70b", "models"),
    ("pvc://m/x/", "/models/x", "m"),
    ("/data/llama", "/data/llama", None),
])
def test_model_uris(uri: str, path: str, claim: str | None) -> None:
    source = parse_model_uri(uri)
    assert (source.path, source.claim) == (path, claim)
    assert bool(source.volumes()) == (claim is not None)


@pytest.mark.parametrize("uri", ["pvc://models", "pvc:///x", "s3://bucket/x", "relative/path"])
def test_bad_model_uris_are_user_errors(uri: str) -> None:
    with pytest.raises(SpecdError, match="model uri"):
        parse_model_uri(uri)


@pytest.mark.parametrize("method", ["model", "none"])
def test_pod_commands_and_router_config_are_accepted_by_the_serving_plane(method: str) -> None:
    """The contract with `specd worker` / `specd router`: their own parsers accept what the
    operator puts into pods, and the router reads the ConfigMap's configuration."""
    from specd.cli import build_parser
    from specd.router.config import config_from_dict

    spec = {**MODEL_DRAFT, "draft": {**MODEL_DRAFT["draft"], "method": method},
            "scheduling": {"speculation": {"mode": "none" if method == "none" else "fixed",
                                           "k": 3, "maxK": 6}}}
    children = _by_kind_name(builders.build_children(_body(spec), CONFIG))
    parser = build_parser()
    for (kind, _), child in children.items():
        if kind == "Deployment":
            command = child["spec"]["template"]["spec"]["containers"][0]["command"]
            assert command[0] == "specd"
            args = parser.parse_args(command[1:])
            assert args.port in (50051, 50061, 50062)
    config = config_from_dict(yaml.safe_load(
        children[("ConfigMap", "svc-router-config")]["data"]["router.yaml"]))
    assert config.discovery.target_service == "svc-target"
    assert bool(config.discovery.draft_service) == (method == "model")
    assert (config.k, config.max_k) == (3, 6)


def test_deployments_get_the_autoscalers_replicas_while_it_is_on() -> None:
    autoscaled = {**MODEL_DRAFT, "autoscaling": {"enabled": True,
                                                 "target": {"minReplicas": 1, "maxReplicas": 3},
                                                 "draft": {"minReplicas": 0, "maxReplicas": 2}}}

    def replicas(spec: dict, status: dict | None = None) -> tuple[int, int]:
        body = {**_body(spec), "status": status or {}}
        found = _by_kind_name(builders.build_children(body, CONFIG))
        return (found[("Deployment", "svc-target")]["spec"]["replicas"],
                found[("Deployment", "svc-draft")]["spec"]["replicas"])

    decided = {"autoscaling": {"targetReplicas": 3, "draftReplicas": 0, "reason": "TargetScaleUp"}}
    assert replicas(MODEL_DRAFT, decided) == (2, 4)  # off: the spec's, whatever the status says
    assert replicas(autoscaled) == (2, 2)  # on, before a decision: the spec's within the bounds
    assert replicas(autoscaled, decided) == (3, 0)
