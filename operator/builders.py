"""Pure builders: a SpecDecodingService -> the child objects the operator applies.

Every function returns plain dicts (the server-side apply bodies); nothing here talks to the
API server, so the whole desired state of a resource can be unit-tested from its spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import yaml

from specd import contract as c
from specd.operator import crd, pools
from specd.operator import names as n
from specd.operator.model import ModelSource, parse_model_uri

GPU = "nvidia.com/gpu"
# Every kind `build_children` can return: the kinds pruning looks through.
CHILD_KINDS = ("ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service", "Deployment",
               "PodDisruptionBudget")


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings that are not part of a resource's spec."""

    image: str = "ghcr.io/specd/specd:0.1.0"
    image_pull_policy: str = "IfNotPresent"


@dataclasses.dataclass(frozen=True)
class Owner:
    """The identity of a SpecDecodingService, as its children reference it."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": crd.KIND, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}


def build_children(body: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    """Every child of the resource `body`, in apply order (config before its readers)."""
    owner = Owner.of(body)
    spec = crd.apply_defaults(body["spec"])
    image = spec.get("image") or config.image
    replicas = pools.desired(spec, body.get("status") or {})
    router_yaml = render_router_config(router_config(owner, spec))
    children = [
        router_config_map(owner, router_yaml),
        router_service_account(owner),
        router_role(owner),
        router_role_binding(owner),
        worker_service(owner, n.TARGET, n.TARGET_PORT),
        target_deployment(owner, spec, replicas.target, image, config.image_pull_policy),
        disruption_budget(owner, n.TARGET),
    ]
    if pools.has_draft_pool(spec):
        children += [
            worker_service(owner, n.DRAFT, n.DRAFT_PORT),
            draft_deployment(owner, spec, replicas.draft, image, config.image_pull_policy),
            disruption_budget(owner, n.DRAFT),
        ]
    children += [
        router_service(owner, spec),
        router_deployment(owner, spec, image, config.image_pull_policy, router_yaml),
        disruption_budget(owner, n.ROUTER),
    ]
    return children


def _meta(owner: Owner, name: str, role: str | None = None) -> dict[str, Any]:
    labels = n.role_labels(owner.name, role) if role else n.instance_labels(owner.name)
    return {"name": name, "namespace": owner.namespace, "labels": labels,
            "ownerReferences": [owner.reference()]}


# --- router configuration -------------------------------------------------------------------

def router_config(owner: Owner, spec: dict[str, Any]) -> dict[str, Any]:
    """The router's configuration file (the contract with `specd router --config`)."""
    scheduling = spec["scheduling"]
    speculation = scheduling["speculation"]
    return {
        "policy": scheduling["policy"],
        "speculation": {"mode": speculation["mode"], "k": speculation["k"],
                        "maxK": speculation["maxK"]},
        "maxBatchSize": scheduling["maxBatchSize"],
        "discovery": {
            "namespace": owner.namespace,
            "targetService": n.child_name(owner.name, n.TARGET),
            # null when the drafts come from inside the target workers (no draft pool)
            "draftService": n.child_name(owner.name, n.DRAFT) if pools.has_draft_pool(spec) else None,
            "targetPort": n.TARGET_PORT,
            "draftPort": n.DRAFT_PORT,
        },
    }


def render_router_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def router_config_map(owner: Owner, router_yaml: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(owner, n.router_config_name(owner.name), n.ROUTER),
            "data": {n.ROUTER_CONFIG_KEY: router_yaml}}


# --- router identity for endpoint discovery --------------------------------------------------

def router_service_account(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(owner, n.router_account_name(owner.name), n.ROUTER)}


def router_role(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(owner, n.router_account_name(owner.name), n.ROUTER),
            "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["get", "list", "watch"]}]}


def router_role_binding(owner: Owner) -> dict[str, Any]:
    account = n.router_account_name(owner.name)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(owner, account, n.ROUTER),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account,
                          "namespace": owner.namespace}]}


# --- Services and PodDisruptionBudgets --------------------------------------------------------

def _grpc_port(port: int) -> dict[str, Any]:
    return {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP"}


def worker_service(owner: Owner, role: str, port: int) -> dict[str, Any]:
    """Headless: the router discovers every worker pod through the Service's EndpointSlices."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(owner, n.child_name(owner.name, role), role),
            "spec": {"clusterIP": "None", "selector": n.selector_labels(owner.name, role),
                     "ports": [_grpc_port(port)]}}


def router_service(owner: Owner, spec: dict[str, Any]) -> dict[str, Any]:
    service = spec["router"]["service"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(owner, n.child_name(owner.name, n.ROUTER), n.ROUTER),
            "spec": {"type": service["type"],
                     "selector": n.selector_labels(owner.name, n.ROUTER),
                     "ports": [_grpc_port(service["port"]),
                               {"name": "http", "port": service["httpPort"],
                                "targetPort": "http", "protocol": "TCP"}]}}


def disruption_budget(owner: Owner, role: str) -> dict[str, Any]:
    """At most one pod of a role voluntarily evicted at a time (drains, node upgrades)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(owner, n.child_name(owner.name, role), role),
            "spec": {"maxUnavailable": 1,
                     "selector": {"matchLabels": n.selector_labels(owner.name, role)}}}


# --- Deployments ------------------------------------------------------------------------------

def _resources(resources: dict[str, Any] | None, gpus: int) -> dict[str, Any]:
    """The user's resources with nvidia.com/gpu forced to `gpus` (limits; requests if set)."""
    out = {section: {k: v for k, v in quantities.items() if k != GPU}
           for section, quantities in (resources or {}).items()}
    if gpus:
        out.setdefault("limits", {})[GPU] = gpus
    return {section: quantities for section, quantities in out.items() if quantities}


def _with_metrics(container: dict[str, Any], owner: Owner) -> dict[str, Any]:
    """Prometheus /metrics on a port of its own (named `metrics`, for a PodMonitor), and the
    service name its series are labelled with."""
    port = c.METRICS_PORT.default
    container["command"] = [*container["command"], "--metrics-port", str(port)]
    container["ports"] = [*container["ports"], {"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    container["env"] = [*container.get("env", []), {"name": c.SERVICE_ENV, "value": owner.name}]
    return container


def _grpc_probe(port: int, period: int, failures: int) -> dict[str, Any]:
    return {"grpc": {"port": port}, "periodSeconds": period, "failureThreshold": failures}


def _worker_container(image: str, pull_policy: str, command: list[str], port: int,
                      resources: dict[str, Any], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "worker",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": command,
        "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
        "resources": resources,
        # Loading a large checkpoint takes minutes: the startup probe allows up to an hour.
        "startupProbe": _grpc_probe(port, 10, 360),
        "readinessProbe": _grpc_probe(port, 10, 3),
        "livenessProbe": _grpc_probe(port, 20, 3),
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def _placement(role_spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if role_spec.get("nodeSelector"):
        out["nodeSelector"] = role_spec["nodeSelector"]
    if role_spec.get("tolerations"):
        out["tolerations"] = role_spec["tolerations"]
    return out


def _deployment(owner: Owner, role: str, replicas: int, pod_spec: dict[str, Any],
                strategy: dict[str, Any], pod_annotations: dict[str, str] | None = None,
                progress_deadline: int = 600) -> dict[str, Any]:
    template_meta: dict[str, Any] = {"labels": n.role_labels(owner.name, role)}
    if pod_annotations:
        template_meta["annotations"] = pod_annotations
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(owner, n.child_name(owner.name, role), role),
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": n.selector_labels(owner.name, role)},
                     "strategy": strategy,
                     "revisionHistoryLimit": 3,
                     "progressDeadlineSeconds": progress_deadline,
                     "template": {"metadata": template_meta, "spec": pod_spec}}}


def target_command(spec: dict[str, Any], model: ModelSource) -> list[str]:
    target = spec["target"]
    command = ["specd", "worker", "--role", n.TARGET, "--model", model.path,
               "--port", str(n.TARGET_PORT),
               "--tensor-parallel-size", str(target["tensorParallelSize"]),
               "--dtype", target["dtype"]]
    if spec["draft"]["method"] in c.IN_TARGET_METHODS:  # this worker runs the method itself
        command += ["--draft-method", spec["draft"]["method"]]
    return command


def target_deployment(owner: Owner, spec: dict[str, Any], replicas: int, image: str,
                      pull_policy: str) -> dict[str, Any]:
    """All tensor-parallel processes of a replica run in one pod that holds tp GPUs; `replicas`:
    `pools.desired` (the spec's, or the autoscaler's)."""
    target = spec["target"]
    model = parse_model_uri(target["model"]["uri"])
    tp = target["tensorParallelSize"]
    # NCCL between the tensor-parallel ranks exchanges through /dev/shm; the default 64Mi
    # of a container is far too small.
    shm_volume = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    shm_mount = {"name": "dshm", "mountPath": "/dev/shm"}
    container = _worker_container(image, pull_policy, target_command(spec, model),
                                  n.TARGET_PORT, _resources(target.get("resources"), tp),
                                  model.mounts() + [shm_mount])
    if tp > 1:
        # a rank that fails (or a collective that times out) aborts the process group instead of
        # leaving the other ranks blocked in NCCL: the pod exits and restarts as a whole
        container["env"] = [{"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
                            {"name": "NCCL_DEBUG", "value": "WARN"}]
    _with_metrics(container, owner)
    pod_spec = {"automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 60,
                "containers": [container],
                "volumes": model.volumes() + [shm_volume],
                **_placement(target)}
    # GPUs are scarce: replace pods one at a time instead of surging an extra tp-GPU pod.
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return _deployment(owner, n.TARGET, replicas, pod_spec, strategy,
                       progress_deadline=3600)


def draft_deployment(owner: Owner, spec: dict[str, Any], replicas: int, image: str,
                     pull_policy: str) -> dict[str, Any]:
    draft = spec["draft"]
    model = parse_model_uri(draft["model"]["uri"])
    command = ["specd", "worker", "--role", n.DRAFT, "--model", model.path,
               "--port", str(n.DRAFT_PORT), "--dtype", draft["dtype"]]
    container = _worker_container(image, pull_policy, command, n.DRAFT_PORT,
                                  _resources(draft.get("resources"), draft["gpus"]),
                                  model.mounts())
    _with_metrics(container, owner)
    pod_spec = {"automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 30,
                "containers": [container],
                "volumes": model.volumes(),
                **_placement(draft)}
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    return _deployment(owner, n.DRAFT, replicas, pod_spec, strategy)


def config_hash(router_yaml: str) -> str:
    return hashlib.sha256(router_yaml.encode()).hexdigest()[:16]


def router_deployment(owner: Owner, spec: dict[str, Any], image: str, pull_policy: str,
                      router_yaml: str) -> dict[str, Any]:
    router = spec["router"]
    config_path = f"{n.ROUTER_CONFIG_DIR}/{n.ROUTER_CONFIG_KEY}"
    container = {
        "name": "router",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["specd", "router", "--config", config_path, "--port", str(n.ROUTER_PORT),
                    "--http-port", str(c.HTTP_PORT.default)],
        "ports": [{"name": "grpc", "containerPort": n.ROUTER_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": c.HTTP_PORT.default, "protocol": "TCP"}],
        "resources": _resources(router.get("resources"), 0),
        # who this router is among the replicas of its Service: it takes its share of the workers
        "env": [{"name": c.POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": c.ROUTER_SERVICE_ENV, "value": n.child_name(owner.name, n.ROUTER)}],
        # The router serves once a target worker does, which may take as long as loading the
        # target's checkpoint: liveness waits for that (found on the real node).
        "startupProbe": _grpc_probe(n.ROUTER_PORT, 5, 720),
        "readinessProbe": _grpc_probe(n.ROUTER_PORT, 5, 3),
        "livenessProbe": _grpc_probe(n.ROUTER_PORT, 20, 3),
        # Read-only root: the only writable place is /tmp (Python temporary files).
        "volumeMounts": [{"name": "config", "mountPath": n.ROUTER_CONFIG_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
    }
    _with_metrics(container, owner)
    pod_spec = {"serviceAccountName": n.router_account_name(owner.name),
                "containers": [container],
                "volumes": [{"name": "config",
                             "configMap": {"name": n.router_config_name(owner.name)}},
                            {"name": "tmp", "emptyDir": {}}]}
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    # The router reads its configuration at start: a new configuration rolls the pods.
    annotations = {n.CONFIG_HASH_ANNOTATION: config_hash(router_yaml)}
    return _deployment(owner, n.ROUTER, router["replicas"], pod_spec, strategy, annotations)
