"""The dev cluster is a real control plane: scheduling, schema validation, RBAC, garbage
collection and Helm all go through the real kube-* binaries (one cluster for the session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from specd.devcluster.cluster import DevCluster

CHART = Path(__file__).parent / "testdata" / "hello-chart"
FAKE_NODES = {"kwok-gpu-0", "kwok-gpu-1"}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.5)


def get_json(cluster: DevCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture
def namespace(dev_cluster: DevCluster, request: pytest.FixtureRequest):
    name = request.node.name.replace("_", "-")[:50].strip("-")
    dev_cluster.kubectl("create", "namespace", name)
    wait_for(f"default ServiceAccount in {name}", lambda: dev_cluster.kubectl(
        "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0)
    yield name
    dev_cluster.kubectl("delete", "namespace", name, "--wait=false")


def test_server_reports_pinned_version_over_tls(dev_cluster: DevCluster) -> None:
    version = json.loads(dev_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.33.")
    assert dev_cluster.server.startswith("https://127.0.0.1:")
    out = subprocess.run([dev_cluster.bin_dir / "kube-apiserver", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"Kubernetes {version['serverVersion']['gitVersion']}"


def test_fake_gpu_nodes_are_ready(dev_cluster: DevCluster) -> None:
    nodes = get_json(dev_cluster, "nodes")["items"]
    assert {n["metadata"]["name"] for n in nodes} >= FAKE_NODES
    for node in nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def _deployment(name: str, replicas: int, gpus: int) -> str:
    return yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "main", "image": "registry.example/worker:1",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}},
        },
    })


def test_deployment_pods_are_scheduled_on_fake_gpu_nodes_and_run(
        dev_cluster: DevCluster, namespace: str) -> None:
    # 3 pods x 4 GPUs cannot fit on one 8-GPU node: the scheduler must spread them.
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_deployment("gpu", 3, 4))
    dev_cluster.kubectl("rollout", "status", "-n", namespace, "deployment/gpu", "--timeout=90s",
                        timeout=120)
    pods = get_json(dev_cluster, "pods", "-n", namespace, "-l", "app=gpu")["items"]
    assert len(pods) == 3
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert all(p["status"].get("podIP") for p in pods)
    placed = [p["spec"]["nodeName"] for p in pods]
    assert set(placed) <= FAKE_NODES and len(set(placed)) == 2


def test_job_pods_complete_and_deleted_pods_go_away(dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.kubectl("create", "job", "once", "--image=registry.example/batch:1", "-n", namespace)
    dev_cluster.kubectl("run", "server", "--image=registry.example/server:1", "--restart=Never",
                        "-n", namespace)
    dev_cluster.kubectl("wait", "--for=condition=Complete", "job/once", "-n", namespace,
                        "--timeout=60s", timeout=90)
    dev_cluster.kubectl("wait", "--for=condition=Ready", "pod/server", "-n", namespace,
                        "--timeout=60s", timeout=90)
    # A bare pod keeps running (only Job pods complete), and deleting it does not hang in
    # Terminating although no kubelet confirms the shutdown.
    assert get_json(dev_cluster, "pod", "server", "-n", namespace)["status"]["phase"] == "Running"
    dev_cluster.kubectl("delete", "pod", "server", "-n", namespace, "--timeout=30s")
    gone = dev_cluster.kubectl("get", "pod", "server", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_scheduler_refuses_pod_asking_more_gpus_than_any_node(
        dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_deployment("huge", 1, 9))

    def unschedulable() -> bool:
        pods = get_json(dev_cluster, "pods", "-n", namespace, "-l", "app=huge")["items"]
        return bool(pods) and any(
            c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
            and "nvidia.com/gpu" in c.get("message", "")
            for c in pods[0]["status"].get("conditions", []))

    wait_for("the scheduler to report the pod unschedulable", unschedulable)


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.specd.io}
spec:
  group: test.specd.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas]
            properties:
              replicas: {type: integer, minimum: 1, maximum: 8}
              mode: {type: string, enum: [fast, slow]}
"""


def _widget(replicas: object, mode: str = "fast") -> str:
    return yaml.safe_dump({"apiVersion": "test.specd.io/v1", "kind": "Widget",
                           "metadata": {"name": "w"}, "spec": {"replicas": replicas, "mode": mode}})


def test_crd_structural_schema_refuses_invalid_object(
        dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.kubectl("apply", "-f", "-", input=CRD)
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.test.specd.io",
                        "--timeout=30s")
    wait_for("the Widget resource to be served", lambda: dev_cluster.kubectl(
        "get", "widgets", "-n", namespace, check=False).returncode == 0)

    bad = dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_widget(20), check=False)
    assert bad.returncode != 0
    assert "spec.replicas" in bad.stderr and "less than or equal to 8" in bad.stderr

    bad_enum = dev_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                                   input=_widget(2, mode="warp"), check=False)
    assert bad_enum.returncode != 0 and "spec.mode" in bad_enum.stderr

    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_widget(2))
    assert get_json(dev_cluster, "widget", "w", "-n", namespace)["spec"]["replicas"] == 2


def test_rbac_denies_unprivileged_service_account(
        dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    user = f"system:serviceaccount:{namespace}:nobody"

    denied = dev_cluster.kubectl("get", "pods", "-n", namespace, as_user=user, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr and user in denied.stderr
    can = dev_cluster.kubectl("auth", "can-i", "create", "deployments", "-n", namespace,
                              as_user=user, check=False)
    assert can.stdout.strip() == "no"

    # The denial is RBAC's decision, not a broken identity: a Role grant lets it through.
    dev_cluster.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods",
                        "-n", namespace)
    dev_cluster.kubectl("create", "rolebinding", "nobody-reads", "--role=pod-reader",
                        f"--serviceaccount={namespace}:nobody", "-n", namespace)
    wait_for("the RoleBinding to take effect", lambda: dev_cluster.kubectl(
        "get", "pods", "-n", namespace, as_user=user, check=False).returncode == 0, 20)
    still_denied = dev_cluster.kubectl("get", "secrets", "-n", namespace, as_user=user,
                                       check=False)
    assert still_denied.returncode != 0 and "forbidden" in still_denied.stderr


def test_deleting_owner_garbage_collects_dependents(
        dev_cluster: DevCluster, namespace: str) -> None:
    dev_cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner_uid = get_json(dev_cluster, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    owner_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
    dependents = [
        {"apiVersion": "v1", "kind": kind,
         "metadata": {"name": "dependent", "ownerReferences": [owner_ref]}}
        for kind in ("ConfigMap", "Secret")
    ]
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(dependents))
    # And the controller-made chain Deployment -> ReplicaSet -> Pods.
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_deployment("chain", 2, 1))
    dev_cluster.kubectl("rollout", "status", "-n", namespace, "deployment/chain",
                        "--timeout=60s", timeout=90)
    assert get_json(dev_cluster, "replicasets", "-n", namespace, "-l", "app=chain")["items"]

    dev_cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    dev_cluster.kubectl("delete", "deployment", "chain", "-n", namespace, "--cascade=background")

    def collected() -> bool:
        left = dev_cluster.kubectl("get", "configmap/dependent", "secret/dependent",
                                   "-n", namespace, "--ignore-not-found", "-o", "name").stdout
        chain = dev_cluster.kubectl("get", "replicasets,pods", "-n", namespace, "-l", "app=chain",
                                    "-o", "name").stdout
        return not left.strip() and not chain.strip()

    wait_for("the garbage collector to delete the dependents", collected, 60)


@pytest.fixture
def helm(dev_cluster: DevCluster, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    # Keep helm's cache/config/data out of $HOME.
    env = {**dev_cluster.env, **{f"HELM_{kind}_HOME": str(tmp_path / kind.lower())
                                 for kind in ("CACHE", "CONFIG", "DATA")}}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(dev_cluster.helm), *args], check=False, capture_output=True, text=True,
                                env=env, timeout=180)
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                        f"{result.stdout}\n{result.stderr}")
        return result

    return run


def test_helm_lint_template_install(helm, dev_cluster: DevCluster, namespace: str) -> None:
    lint = helm("lint", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    bad_lint = helm("lint", str(CHART), "--set", "replicas=-1", check=False)
    assert bad_lint.returncode != 0 and "replicas" in bad_lint.stdout + bad_lint.stderr

    rendered = list(yaml.safe_load_all(
        helm("template", "demo", str(CHART), "--set", "replicas=2,gpus=1").stdout))
    by_kind = {doc["kind"]: doc for doc in rendered if doc}
    assert set(by_kind) == {"ConfigMap", "Deployment"}
    deployment = by_kind["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": 1}

    helm("install", "demo", str(CHART), "-n", namespace, "--set", "replicas=2,gpus=1",
         "--wait", "--timeout=90s")
    releases = json.loads(helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    installed = get_json(dev_cluster, "deployment", "demo-hello", "-n", namespace)
    assert installed["status"].get("readyReplicas") == 2
    greeting = get_json(dev_cluster, "configmap", "demo-greeting", "-n", namespace)
    assert greeting["data"] == {"greeting": "hello"}

    helm("uninstall", "demo", "-n", namespace, "--wait")
    gone = dev_cluster.kubectl("get", "deployment", "demo-hello", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_cli_up_and_down_leave_no_processes(dev_cluster: DevCluster, tmp_path: Path) -> None:
    """`specd dev-cluster up` returns a running cluster in the background; `down` removes it."""
    directory = tmp_path / "cli-cluster"
    cli = [sys.executable, "-m", "specd.cli", "dev-cluster"]
    env = {**os.environ, "SPECD_TESTBINS": str(dev_cluster.bin_dir)}
    up = subprocess.run([*cli, "up", "--dir", str(directory), "--nodes", "1"],
                        check=False, capture_output=True, text=True, env=env, timeout=240)
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.strip())
    assert kubeconfig == directory / "kubeconfig" and kubeconfig.is_file()
    state = json.loads((directory / "state.json").read_text())
    pids = [p["pid"] for p in state["processes"]]
    assert len(pids) == 5 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    try:
        nodes = subprocess.run([str(dev_cluster.kubectl_path), f"--kubeconfig={kubeconfig}",
                                "get", "nodes", "-o", "name"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert nodes == ["node/kwok-gpu-0"]
        again = subprocess.run([*cli, "up", "--dir", str(directory)], check=False,
                               capture_output=True, text=True, env=env, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = subprocess.run([*cli, "down", "--dir", str(directory)], check=False,
                              capture_output=True, text=True, env=env, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not directory.exists()
    assert [pid for pid in pids if _alive(pid)] == []

    # A directory that is not a dev cluster's is neither used nor deleted.
    foreign = tmp_path / "not-a-cluster"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = subprocess.run([*cli, "up", "--dir", str(foreign)], check=False,
                             capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "holds no dev cluster" in refused.stderr
    subprocess.run([*cli, "down", "--dir", str(foreign)], env=env, timeout=60, check=True)
    assert (foreign / "keep.txt").read_text() == "mine"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of the TCP sockets that process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            ip_hex, port_hex = local.split(":")
            if width == 8:  # little-endian IPv4
                ip = ".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "ipv6:" + ip_hex
            found.add((ip, int(port_hex, 16)))
    return found


def test_every_process_listens_on_loopback_only(dev_cluster: DevCluster) -> None:
    for record in dev_cluster.processes:
        addresses = _listening_addresses(record.pid)
        assert addresses, f"{record.name} listens nowhere"
        assert {ip for ip, _ in addresses} == {"127.0.0.1"}, (record.name, addresses)
