"""The operator end to end on a real control plane (kube-apiserver, controllers, scheduler, kwok).

The chart is installed with helm; the operator runs as a subprocess (`specd operator`) with a
token of the chart's ServiceAccount, so it has exactly the chart's permissions. Every example is
applied and followed to Ready with its pods Running on kwok's fake GPU nodes; then spec changes,
drift, invalid resources, an operator restart and deletion.
"""

from __future__ import annotations

import base64
import functools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from k8s_support import OperatorProcess, cell, condition, get, wait_for

from specd.devcluster import kwok
from specd.devcluster.cluster import DevCluster
from specd.operator import builders, names

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
RELEASE, OPERATOR_NS, NS = "specd", "specd-e2e-system", "specd-e2e"
OPERATOR_SA = f"{RELEASE}-operator"
# The 70B example's dedicated target pool: two fake 8-GPU nodes with 2Ti memory, the GPU
# product label and the pool's taint (its drafts go to the dev cluster's own GPU nodes).
GPU_NODES = [f"specd-e2e-h100-{i}" for i in range(2)]
TARGET_POOL_TAINT = {"key": "dedicated", "value": "llm-target", "effect": "NoSchedule"}
GPU_PRODUCT = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
CLAIMS = ["specd-models", "llama-models"]  # the PVCs the examples' model URIs name
KINDS = "deployments,services,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets"


def diagnose(cluster: DevCluster, operator: OperatorProcess) -> str:
    state = cluster.kubectl("get", "sds,deployments,pods", "-n", NS, "-o", "wide",
                            check=False).stdout
    statuses = cluster.kubectl("get", "sds", "-n", NS, "-o", "yaml", check=False).stdout
    return f"{state}\n{statuses[-3000:]}\noperator log:\n{operator.tail()}"


def sds(cluster: DevCluster, name: str) -> dict | None:
    return get(cluster, "sds", name, "-n", NS)


def settled(cluster: DevCluster, name: str) -> dict | None:
    """The resource once Ready, fully rolled out, for its latest generation."""
    body = sds(cluster, name)
    if not body:
        return None
    status = body.get("status", {})
    ok = (status.get("observedGeneration") == body["metadata"]["generation"]
          and condition(body, "Ready").get("status") == "True"
          and condition(body, "Progressing").get("status") == "False"
          and condition(body, "Degraded").get("status") == "False")
    return body if ok else None


def children(cluster: DevCluster, name: str) -> list[dict]:
    listing = get(cluster, KINDS, "-n", NS, "-l", f"{names.LABEL_INSTANCE}={name}",
                  "--show-managed-fields")
    return listing["items"] if listing else []


def child_keys(cluster: DevCluster, name: str) -> set[tuple[str, str]]:
    return {(c["kind"], c["metadata"]["name"]) for c in children(cluster, name)}


def expected_children(body: dict) -> set[tuple[str, str]]:
    return {(c["kind"], c["metadata"]["name"])
            for c in builders.build_children(body, builders.OperatorConfig())}


def pods(cluster: DevCluster, name: str, role: str | None = None) -> list[dict]:
    selector = f"{names.LABEL_INSTANCE}={name}" + (f",{names.LABEL_COMPONENT}={role}"
                                                   if role else "")
    return get(cluster, "pods", "-n", NS, "-l", selector)["items"]


def running(cluster: DevCluster, name: str, role: str, count: int) -> bool:
    found = [p for p in pods(cluster, name, role) if not p["metadata"].get("deletionTimestamp")]
    return len(found) == count and all(p["status"].get("phase") == "Running" for p in found)


def example(name: str) -> str:
    return (EXAMPLES / f"{name}.yaml").read_text()


def service_account_kubeconfig(cluster: DevCluster, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token)."""
    token = cluster.kubectl("create", "token", OPERATOR_SA, "-n", OPERATOR_NS,
                            "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    ca = server.get("certificate-authority-data") or base64.b64encode(
        Path(server["certificate-authority"]).read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "dev", "cluster": {"server": server["server"],
                                                 "certificate-authority-data": ca}}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "dev", "user": "operator"}}],
    }))
    path.chmod(0o600)
    return path


def models_volumes() -> list[dict]:
    """Pre-bound PV/PVC pairs, so pods mounting pvc://<claim>/... can be scheduled."""
    objects = []
    for claim in CLAIMS:
        objects.append({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"{NS}-{claim}"},
            "spec": {"capacity": {"storage": "1Ti"}, "accessModes": ["ReadOnlyMany"],
                     "storageClassName": "", "hostPath": {"path": f"/srv/{claim}"},
                     "claimRef": {"namespace": NS, "name": claim}}})
        objects.append({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": NS},
            "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                     "volumeName": f"{NS}-{claim}",
                     "resources": {"requests": {"storage": "1Ti"}}}})
    return objects


@pytest.fixture(scope="module")
def cluster(dev_cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[DevCluster]:
    """The chart installed, fake H100 nodes, the test namespace with its model volumes."""
    helm = [str(dev_cluster.helm), "--kubeconfig", str(dev_cluster.kubeconfig)]
    installed = subprocess.run(helm + ["install", RELEASE, str(REPO / "helm" / "specd"),
                                       "--namespace", OPERATOR_NS, "--create-namespace",
                                       "--wait", "--timeout", "120s"],
                               capture_output=True, text=True, env=dev_cluster.env)
    assert installed.returncode == 0, installed.stderr
    nodes = [kwok.node_manifest(name, 8, cpu="128", memory="2Ti") for name in GPU_NODES]
    for node in nodes:
        node["metadata"]["labels"].update(GPU_PRODUCT)
        node["spec"]["taints"] = [TARGET_POOL_TAINT]
    dev_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
    dev_cluster.kubectl("create", "namespace", NS)
    wait_for("the namespace's default ServiceAccount", lambda: dev_cluster.kubectl(
        "get", "serviceaccount", "default", "-n", NS, check=False).returncode == 0)
    dev_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(models_volumes()))
    wait_for("model volumes bound", lambda: all(
        (get(dev_cluster, "pvc", claim, "-n", NS) or {}).get("status", {}).get("phase")
        == "Bound" for claim in CLAIMS))
    yield dev_cluster
    dev_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    dev_cluster.kubectl("delete", "pv", *[f"{NS}-{c}" for c in CLAIMS], "--wait=false",
                        check=False)
    subprocess.run(helm + ["uninstall", RELEASE, "--namespace", OPERATOR_NS],
                   capture_output=True, env=dev_cluster.env)
    dev_cluster.kubectl("delete", "crd", "specdecodingservices.specd.io", check=False)
    dev_cluster.kubectl("delete", "node", *GPU_NODES, check=False)


@pytest.fixture(scope="module")
def live_router() -> Iterator[str]:
    """A real router with demo-model workers on loopback, standing in for every resource's
    router Service (the pods on kwok nodes run nothing)."""
    from specd.demo.paths import demo_model_dirs
    from specd.router.local import LocalStack

    stack = LocalStack()
    try:
        for role, model in zip(("target", "draft"), demo_model_dirs()):
            stack.wait_serving(stack.start_worker(role, model), 120)
        router = stack.start_router("laps-sd", "goodput", 4)
        stack.wait_serving(router, 60)
        yield router.address
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def operator(cluster: DevCluster, live_router: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    directory = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(cluster, directory / "kubeconfig")
    proc = OperatorProcess(kubeconfig, directory / "operator.log", live_router)
    proc.start()
    yield proc
    proc.stop()
    print(f"operator log tail:\n{proc.tail()}")


def can(cluster: DevCluster, *args: str) -> bool:
    """Whether the chart's ServiceAccount may do this."""
    result = cluster.kubectl("auth", "can-i", *args, check=False,
                             as_user=f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}")
    return result.stdout.strip() == "yes"


def test_chart_installed_the_operator_with_least_privilege(cluster: DevCluster) -> None:
    crd = get(cluster, "crd", "specdecodingservices.specd.io")
    assert crd and crd["spec"]["names"]["shortNames"] == ["sds"]
    assert get(cluster, "deployment", OPERATOR_SA, "-n", OPERATOR_NS)
    can = functools.partial(globals()["can"], cluster)

    assert can("patch", "deployments.apps", "-n", NS)
    assert can("patch", "specdecodingservices.specd.io", "--subresource=status", "-n", NS)
    assert can("create", "roles.rbac.authorization.k8s.io", "-n", NS)
    assert not can("create", "pods", "-n", NS)
    assert not can("get", "secrets", "-n", NS)
    assert not can("delete", "specdecodingservices.specd.io", "-n", NS)
    assert not can("update", "deployments.apps", "-n", NS)
    assert not can("create", "clusterroles.rbac.authorization.k8s.io")


@pytest.mark.parametrize("name,file", [("demo", "demo"), ("llama-70b", "llama-70b")])
def test_example_becomes_ready_with_all_children(cluster: DevCluster, operator: OperatorProcess,
                                                 name: str, file: str) -> None:
    cluster.kubectl("apply", "-n", NS, "-f", "-", input=example(file))
    body = wait_for(f"{name} Ready", lambda: settled(cluster, name), 120,
                    lambda: diagnose(cluster, operator))
    spec = body["spec"]
    assert child_keys(cluster, name) == expected_children(body)
    for child in children(cluster, name):
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "SpecDecodingService", name, body["metadata"]["uid"], True)
        managers = {m["manager"] for m in child["metadata"]["managedFields"]}
        assert "specd-operator" in managers, child["metadata"]["name"]
    fake_nodes = {n["metadata"]["name"] for n in get(cluster, "nodes")["items"]
                  if n["metadata"].get("annotations", {}).get(kwok.NODE_ANNOTATION)}
    expected = {"target": spec["target"]["replicas"], "router": spec["router"]["replicas"]}
    if spec["draft"]["method"] == "model":
        expected["draft"] = spec["draft"]["replicas"]
    for role, count in expected.items():
        wait_for(f"{count} {role} pods Running",
                 lambda role=role, count=count: running(cluster, name, role, count))
        for pod in pods(cluster, name, role):
            assert pod["spec"]["nodeName"] in fake_nodes
    status = body["status"]
    assert status["target"]["readyReplicas"] == spec["target"]["replicas"]
    assert status["endpoint"] == f"{name}-router.{NS}.svc:{spec['router']['service']['port']}"
    target_pod = pods(cluster, name, "target")[0]
    gpus = target_pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) == spec["target"]["tensorParallelSize"]
    reasons = {e["reason"] for e in events(cluster, name)}
    assert {"Reconciled", "ReadyTrue"} <= reasons, reasons


def events(cluster: DevCluster, name: str) -> list[dict]:
    return get(cluster, "events", "-n", NS, "--field-selector",
               f"involvedObject.kind=SpecDecodingService,involvedObject.name={name}")["items"]


def test_kubectl_get_sds_shows_the_useful_columns(cluster: DevCluster, operator: OperatorProcess
                                                  ) -> None:
    wait_for("demo Ready", lambda: settled(cluster, "demo"))
    lines = cluster.kubectl("get", "sds", "-n", NS).stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "TARGET", "AVAILABLE", "DRAFT", "METHOD",
                                "ACCEPTANCE", "SCALING", "AGE"]
    table = "\n".join(lines)
    assert [cell(table, "demo", c) for c in ("READY", "TARGET", "AVAILABLE", "DRAFT", "METHOD",
                                             "SCALING")] == ["True", "1", "1", "1", "model",
                                                             "Disabled"]
    wide = cluster.kubectl("get", "sds", "demo", "-n", NS, "-o", "wide").stdout.splitlines()
    assert {"TP", "K", "ENDPOINT"} <= set(wide[0].split())


def test_scale_subresource_and_k_change_are_rolled_out(cluster: DevCluster,
                                                       operator: OperatorProcess) -> None:
    before = get(cluster, "deployment", "demo-router", "-n", NS)
    old_hash = before["spec"]["template"]["metadata"]["annotations"]["specd.io/config-hash"]
    old_router_pods = {p["metadata"]["name"] for p in pods(cluster, "demo", "router")}
    cluster.kubectl("scale", "sds", "demo", "-n", NS, "--replicas=2")
    cluster.kubectl("patch", "sds", "demo", "-n", NS, "--type=merge", "-p", json.dumps(
        {"spec": {"scheduling": {"speculation": {"k": 2, "maxK": 4}},
                  "draft": {"replicas": 2}}}))
    body = wait_for(f"demo settled\n{operator.tail()}", lambda: (
        (b := settled(cluster, "demo")) and b["status"]["target"]["readyReplicas"] == 2
        and b["status"]["draft"]["readyReplicas"] == 2 and b), 120)
    assert get(cluster, "deployment", "demo-target", "-n", NS)["spec"]["replicas"] == 2
    config = yaml.safe_load(get(cluster, "configmap", "demo-router-config", "-n", NS)[
        "data"]["router.yaml"])
    assert config["speculation"] == {"mode": "goodput", "k": 2, "maxK": 4}
    router = get(cluster, "deployment", "demo-router", "-n", NS)
    assert router["spec"]["template"]["metadata"]["annotations"][
        "specd.io/config-hash"] != old_hash
    wait_for("router pods replaced", lambda: running(cluster, "demo", "router", 1) and not (
        {p["metadata"]["name"] for p in pods(cluster, "demo", "router")} & old_router_pods))
    scale = json.loads(cluster.kubectl("get", "--raw", f"/apis/specd.io/v1alpha1/namespaces/"
                                       f"{NS}/specdecodingservices/demo/scale").stdout)
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert "app.kubernetes.io/component=target" in scale["status"]["selector"]
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]


DELETED = [("deployment", "demo-target"), ("configmap", "demo-router-config"),
           ("service", "demo-draft"), ("rolebinding", "demo-router"),
           ("poddisruptionbudget", "demo-router")]


def test_deleted_children_are_restored(cluster: DevCluster, operator: OperatorProcess) -> None:
    old = {(kind, name): get(cluster, kind, name, "-n", NS)["metadata"]["uid"]
           for kind, name in DELETED}
    for kind, name in DELETED:
        cluster.kubectl("delete", kind, name, "-n", NS, "--wait=false")
    for (kind, name), uid in old.items():
        wait_for(f"{kind} {name} restored", lambda kind=kind, name=name, uid=uid: (
            (obj := get(cluster, kind, name, "-n", NS)) is not None
            and obj["metadata"]["uid"] != uid and not obj["metadata"].get("deletionTimestamp")),
            60)
    wait_for("demo settled again", lambda: settled(cluster, "demo"), 120)
    assert any(e["reason"] == "ChildRestored" for e in events(cluster, "demo"))


def test_edited_children_are_reverted(cluster: DevCluster, operator: OperatorProcess) -> None:
    cluster.kubectl("scale", "deployment", "demo-target", "-n", NS, "--replicas=5")
    cluster.kubectl("patch", "configmap", "demo-router-config", "-n", NS, "--type=merge",
                    "-p", json.dumps({"data": {"router.yaml": "policy: fcfs\n"}}))
    wait_for("target replicas reverted", lambda: get(
        cluster, "deployment", "demo-target", "-n", NS)["spec"]["replicas"] == 2, 60)
    wait_for("router config reverted", lambda: yaml.safe_load(get(
        cluster, "configmap", "demo-router-config", "-n", NS)["data"]["router.yaml"]).get(
        "policy") == "laps-sd", 60)


def test_draft_method_change_prunes_the_draft_pool(cluster: DevCluster, operator: OperatorProcess
                                                   ) -> None:
    cluster.kubectl("patch", "sds", "demo", "-n", NS, "--type=merge", "-p", json.dumps(
        {"spec": {"draft": {"method": "none"}, "scheduling": {"speculation": {"mode": "none"}}}}))
    wait_for("draft pool pruned", lambda: not {key for key in child_keys(cluster, "demo")
                                               if key[1] == "demo-draft"}, 60)
    body = wait_for("demo settled", lambda: settled(cluster, "demo"), 120)
    assert child_keys(cluster, "demo") == expected_children(body)
    assert "draft" not in body["status"]
    assert any(e["reason"] == "Pruned" for e in events(cluster, "demo"))
    config = yaml.safe_load(get(cluster, "configmap", "demo-router-config", "-n", NS)[
        "data"]["router.yaml"])
    assert config["discovery"]["draftService"] is None
    assert config["speculation"]["mode"] == "none"


def _invalid(name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "specd.io/v1alpha1", "kind": "SpecDecodingService",
                           "metadata": {"name": name}, "spec": spec})


TARGET = {"model": {"uri": "/models/m"}}
INVALID = [
    ("k-above-max-k", {"target": TARGET, "scheduling": {"speculation": {"k": 9, "maxK": 8}}},
     "spec.scheduling.speculation.k"),
    ("tp-not-power-of-two", {"target": {**TARGET, "tensorParallelSize": 6}},
     "spec.target.tensorParallelSize"),
    ("draft-model-missing", {"target": TARGET, "draft": {"method": "model"}},
     "spec.draft.model"),
    ("no-drafts-but-speculation", {"target": TARGET, "draft": {"method": "none"}},
     "spec.scheduling.speculation.mode"),
    ("fixed-with-k-zero", {"target": TARGET, "scheduling": {"speculation": {
        "mode": "fixed", "k": 0}}}, "spec.scheduling.speculation.k"),
    ("no-target", {"draft": {"method": "none"}}, "spec.target"),
    ("no-draft-block", {"target": TARGET}, "spec.draft.model"),
    ("bad-model-uri", {"target": {"model": {"uri": "s3://bucket/llama"}}},
     "spec.target.model.uri"),
    ("unknown-policy", {"target": TARGET, "scheduling": {"policy": "random"}},
     "spec.scheduling.policy"),
    ("negative-replicas", {"target": {**TARGET, "replicas": -1}}, "spec.target.replicas"),
    ("unknown-draft-method", {"target": TARGET, "draft": {"method": "medusa"}},
     "spec.draft.method"),
    ("a-name-that-is-far-too-long-for-its-children-names",
     {"target": TARGET, "draft": {"method": "none"}, "scheduling": {"speculation": {"mode": "none"}}},
     "metadata.name"),
]


@pytest.mark.parametrize("name,spec,field", INVALID, ids=[i[0][:24] for i in INVALID])
def test_invalid_resources_are_refused_naming_the_field(cluster: DevCluster, name: str,
                                                        spec: dict, field: str) -> None:
    result = cluster.kubectl("create", "-n", NS, "-f", "-", input=_invalid(name, spec),
                             check=False)
    assert result.returncode != 0, f"{name} was accepted"
    assert "is invalid" in result.stderr and field in result.stderr, result.stderr
    assert sds(cluster, name) is None


def test_a_child_refused_by_the_api_server_is_reported_then_fixed(
        cluster: DevCluster, operator: OperatorProcess) -> None:
    """A spec the CRD accepts but a child's validation refuses: Degraded/ApplyFailed."""
    bad = {"key": "gpu", "operator": "Exists", "effect": "Sometimes"}  # no such effect
    cluster.kubectl("create", "-n", NS, "-f", "-", input=yaml.safe_dump({
        "apiVersion": "specd.io/v1alpha1", "kind": "SpecDecodingService",
        "metadata": {"name": "refused"},
        "spec": {"target": {"model": {"uri": "/models/m"}, "tolerations": [bad]},
                 "draft": {"method": "none"}, "scheduling": {"speculation": {"mode": "none"}}}}))
    body = wait_for("Degraded/ApplyFailed", lambda: (
        (b := sds(cluster, "refused")) and condition(b, "Degraded").get("reason")
        == "ApplyFailed" and b), 60, lambda: diagnose(cluster, operator))
    assert "tolerations" in condition(body, "Degraded")["message"]
    assert condition(body, "Ready")["status"] == "False"
    assert "observedGeneration" not in body["status"]  # no generation was applied
    assert any(e["reason"] == "DegradedTrue" and e["type"] == "Warning"
               for e in events(cluster, "refused"))
    cluster.kubectl("patch", "sds", "refused", "-n", NS, "--type=json", "-p", json.dumps(
        [{"op": "remove", "path": "/spec/target/tolerations"}]))
    wait_for("fixed resource settled", lambda: settled(cluster, "refused"), 120,
             lambda: diagnose(cluster, operator))
    cluster.kubectl("delete", "sds", "refused", "-n", NS)


def test_live_router_figures_reach_the_status(cluster: DevCluster, operator: OperatorProcess,
                                              live_router: str) -> None:
    from specd.client import Client

    wait_for("demo Ready", lambda: settled(cluster, "demo"))
    with Client(live_router, timeout=60) as client:
        client.generate("def parse(text):", 48, ignore_eos=True)
        router = client.stats()

    def reported() -> dict | None:
        """The status once a poll after the generation landed: one taken while it ran may hold
        the acceptance of its first iterations, which the router's estimate has since left."""
        status = (sds(cluster, "demo") or {}).get("status", {})
        rate = status.get("acceptanceRate")
        return status if rate is not None and abs(rate - router.acceptance_rate) < 0.2 else None

    status = wait_for("the router's acceptanceRate in the status", reported, 30, operator.tail)
    assert 0 < status["acceptanceRate"] <= 1
    assert status["goodput"] > 0 and 0 <= status["currentK"] <= 16
    table = cluster.kubectl("get", "sds", "demo", "-n", NS).stdout
    assert float(cell(table, "demo", "ACCEPTANCE")) == status["acceptanceRate"]


def test_operator_restart_keeps_children_and_status(cluster: DevCluster, operator: OperatorProcess
                                                    ) -> None:
    names_ = ["demo", "llama-70b"]
    bodies = {n: wait_for(f"{n} settled", lambda n=n: settled(cluster, n), 120) for n in names_}

    def identities(name: str) -> dict:
        """uid and generation of every child: a rollout or a recreation would change them."""
        return {(c["kind"], c["metadata"]["name"]): (c["metadata"]["uid"],
                                                     c["metadata"].get("generation"))
                for c in children(cluster, name)}

    before = {n: identities(n) for n in names_}
    operator.stop()
    operator.start()
    time.sleep(8)  # the resumed operator reconciles every resource on start
    for n in names_:
        body = wait_for(f"{n} settled after restart\n{operator.tail()}",
                        lambda n=n: settled(cluster, n), 60)
        assert identities(n) == before[n]
        assert body["status"]["conditions"] == bodies[n]["status"]["conditions"]
        assert body["status"]["observedGeneration"] == bodies[n]["status"]["observedGeneration"]
    assert operator.proc is not None and operator.proc.poll() is None


def test_deleting_the_resource_garbage_collects_every_child(cluster: DevCluster,
                                                            operator: OperatorProcess) -> None:
    assert child_keys(cluster, "llama-70b")
    cluster.kubectl("delete", "sds", "llama-70b", "-n", NS, "--wait=true", "--timeout=60s")
    wait_for("llama-70b children garbage-collected",
             lambda: not child_keys(cluster, "llama-70b") and not pods(cluster, "llama-70b"), 90)
    time.sleep(3)  # the operator must not recreate anything of a deleted resource
    assert not child_keys(cluster, "llama-70b")
    assert settled(cluster, "demo")


def test_operator_limited_to_watched_namespaces(cluster: DevCluster, operator: OperatorProcess) -> None:
    """watchNamespaces: RoleBindings in those namespaces only, and the operator still works."""
    upgraded = subprocess.run(
        [str(cluster.helm), "--kubeconfig", str(cluster.kubeconfig), "upgrade", RELEASE,
         str(REPO / "helm" / "specd"), "--namespace", OPERATOR_NS, "--reuse-values",
         "--set", f"watchNamespaces={{{NS}}}", "--wait", "--timeout", "120s"],
        capture_output=True, text=True, env=cluster.env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert can(cluster, "patch", "deployments.apps", "-n", NS)
    assert not can(cluster, "list", "deployments.apps", "-n", "default")
    operator.stop()
    operator.namespaces = [NS]
    operator.start()
    old = get(cluster, "deployment", "demo-target", "-n", NS)["metadata"]["uid"]
    time.sleep(5)  # the restarted operator is watching
    cluster.kubectl("delete", "deployment", "demo-target", "-n", NS, "--wait=false")
    wait_for(f"demo-target restored\n{operator.tail()}", lambda: (
        (obj := get(cluster, "deployment", "demo-target", "-n", NS)) is not None
        and obj["metadata"]["uid"] != old), 60)
    wait_for("demo settled", lambda: settled(cluster, "demo"), 120)
    assert operator.proc is not None and operator.proc.poll() is None
