"""EndpointSliceWatcher against a real control plane: kube-controller-manager writes the
EndpointSlices of headless Services selecting pods that kwok runs on fake nodes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import yaml

from specd.devcluster.cluster import DevCluster
from specd.operator.kube import Kube
from specd.router.k8s_discovery import EndpointSliceWatcher, ready_addresses

NS = "specd-discovery"
PORTS = {"target": 50061, "draft": 50062}


def wait_for(what: str, check: Callable[[], object], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def pool(role: str, replicas: int) -> list[dict]:
    labels = {"app": f"disc-{role}"}
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": f"disc-{role}", "namespace": NS},
         "spec": {"clusterIP": "None", "selector": labels,
                  "ports": [{"name": "grpc", "port": PORTS[role]}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": f"disc-{role}", "namespace": NS},
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "automountServiceAccountToken": False,
                      "containers": [{"name": "worker", "image": "specd:test"}]}}}},
    ]


@pytest.fixture(scope="module")
def cluster(dev_cluster: DevCluster) -> Iterator[DevCluster]:
    dev_cluster.kubectl("create", "namespace", NS)
    wait_for("default ServiceAccount", lambda: dev_cluster.kubectl(
        "get", "serviceaccount", "default", "-n", NS, check=False).returncode == 0)
    dev_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        pool("target", 2) + pool("draft", 1)))
    yield dev_cluster
    dev_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def pod_ips(cluster: DevCluster, role: str) -> list[str]:
    listing = json.loads(cluster.kubectl("get", "pods", "-n", NS, "-l", f"app=disc-{role}",
                                         "-o", "json").stdout)
    return sorted(f"{p['status']['podIP']}:{PORTS[role]}" for p in listing["items"]
                  if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp"))


@pytest.fixture
def watcher(cluster: DevCluster) -> Iterator[EndpointSliceWatcher]:
    w = EndpointSliceWatcher(NS, {"target": "disc-target", "draft": "disc-draft"}, PORTS,
                             kube=Kube.connect(kubeconfig=str(cluster.kubeconfig)),
                             watch_timeout_s=2)  # short watches: the re-watch path runs often
    wait_for("pools ready", lambda: len(pod_ips(cluster, "target")) == 2)
    w.start()
    yield w
    w.stop()


def test_current_lists_ready_endpoints_per_role(cluster: DevCluster,
                                                watcher: EndpointSliceWatcher) -> None:
    wait_for("both roles discovered", lambda: len(watcher.current()["target"]) == 2
             and len(watcher.current()["draft"]) == 1)
    current = watcher.current()
    assert current["target"] == pod_ips(cluster, "target")
    assert current["draft"] == pod_ips(cluster, "draft")
    assert set(current) == {"target", "draft"}


def test_scaling_is_seen_without_restart_across_watch_expiry(
        cluster: DevCluster, watcher: EndpointSliceWatcher) -> None:
    seen: list[dict[str, list[str]]] = []
    changed = threading.Event()

    def on_change(endpoints: dict[str, list[str]]) -> None:
        seen.append(endpoints)
        changed.set()

    watcher.subscribe(on_change)
    wait_for("initial endpoints", lambda: len(watcher.current()["target"]) == 2)
    time.sleep(5)  # two watch timeouts pass: the watcher must have re-watched
    cluster.kubectl("scale", "deployment", "disc-target", "-n", NS, "--replicas=4")
    wait_for("4 targets", lambda: len(watcher.current()["target"]) == 4)
    assert changed.is_set() and len(seen[-1]["target"]) == 4
    assert watcher.current()["target"] == pod_ips(cluster, "target")
    cluster.kubectl("scale", "deployment", "disc-draft", "-n", NS, "--replicas=0")
    wait_for("no drafts", lambda: watcher.current()["draft"] == [])
    assert seen[-1]["draft"] == []
    cluster.kubectl("scale", "deployment", "disc-target", "-n", NS, "--replicas=2")
    cluster.kubectl("scale", "deployment", "disc-draft", "-n", NS, "--replicas=1")
    wait_for("back to 2 targets, 1 draft", lambda: len(watcher.current()["target"]) == 2
             and len(watcher.current()["draft"]) == 1)


def test_stop_is_prompt(cluster: DevCluster) -> None:
    w = EndpointSliceWatcher(NS, {"target": "disc-target"}, {"target": 50061},
                             kube=Kube.connect(kubeconfig=str(cluster.kubeconfig)),
                             watch_timeout_s=300)
    w.start()
    time.sleep(1)
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 5


def test_not_ready_endpoints_are_left_out() -> None:
    slice_ = {"addressType": "IPv4", "endpoints": [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.3"], "conditions": {}},
    ]}
    assert ready_addresses(slice_, 7) == ["10.0.0.1:7", "10.0.0.3:7"]
    assert ready_addresses({"addressType": "IPv6", "endpoints": [
        {"addresses": ["fd00::1"]}]}, 7) == ["[fd00::1]:7"]
