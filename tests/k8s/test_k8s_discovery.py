"""EndpointSliceWatcher against a real control plane: kube-controller-manager writes the
EndpointSlices of headless Services selecting pods that kwok runs on fake nodes. The watcher
runs on an event loop in a thread of its own, as on the router's loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import yaml

from specd.devcluster.cluster import DevCluster
from specd.kube import Kube
from specd.router.k8s_discovery import SERVICE_NAME_LABEL, EndpointSliceWatcher, Peers, ready_addresses

T = TypeVar("T")

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
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        return await call()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(30)


async def started(w: EndpointSliceWatcher) -> None:
    w.start()


def connect(cluster: DevCluster) -> Kube:
    return Kube.connect(kubeconfig=str(cluster.kubeconfig))


@pytest.fixture
def watcher(cluster: DevCluster, loop: asyncio.AbstractEventLoop) -> Iterator[EndpointSliceWatcher]:
    kube = connect(cluster)
    w = EndpointSliceWatcher(NS, {"target": "disc-target", "draft": "disc-draft"}, PORTS, kube=kube,
                             watch_timeout_s=2)  # short watches: the re-watch path runs often
    wait_for("pools ready", lambda: len(pod_ips(cluster, "target")) == 2)
    on_loop(loop, lambda: started(w))
    yield w
    on_loop(loop, w.aclose)
    on_loop(loop, kube.aclose)


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


def test_stop_is_prompt(cluster: DevCluster, loop: asyncio.AbstractEventLoop) -> None:
    kube = connect(cluster)
    w = EndpointSliceWatcher(NS, {"target": "disc-target"}, {"target": 50061}, kube=kube,
                             watch_timeout_s=300)
    on_loop(loop, lambda: started(w))
    wait_for("the first listing", lambda: w.current()["target"])
    time.sleep(1)  # now in the watch
    begun = time.monotonic()
    on_loop(loop, w.aclose)
    assert time.monotonic() - begun < 5
    on_loop(loop, kube.aclose)


def test_without_a_client_it_connects_with_the_environments_credentials(
        cluster: DevCluster, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))  # (no pod here: no in-cluster token)
    w = EndpointSliceWatcher(NS, {"target": "disc-target"}, {"target": 50061})
    on_loop(loop, lambda: started(w))
    wait_for("the first listing", lambda: len(w.current()["target"]) >= 2)
    on_loop(loop, w.aclose)


def test_not_ready_endpoints_are_left_out() -> None:
    slice_ = {"addressType": "IPv4", "endpoints": [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.3"], "conditions": {}},
    ]}
    assert ready_addresses(slice_, 7) == ["10.0.0.1:7", "10.0.0.3:7"]
    assert ready_addresses({"addressType": "IPv6", "endpoints": [
        {"addresses": ["fd00::1"]}]}, 7) == ["[fd00::1]:7"]


def endpoint_slice(service: str, port: int, endpoints: list[dict]) -> dict:
    """A slice written by hand (as a controller would), left alone by kube-controller-manager."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": service, "namespace": NS,
                         "labels": {SERVICE_NAME_LABEL: service,
                                    "endpointslice.kubernetes.io/managed-by": "specd-tests"}},
            "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}], "endpoints": endpoints}


def router_endpoints(conditions: dict[str, dict]) -> list[dict]:
    """Router pods `router-N` (by name) behind 10.9.0.N, with their conditions."""
    return [{"addresses": [f"10.9.0.{i}"], "conditions": c, "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}
            for i, (pod, c) in enumerate(conditions.items(), 1)]


def test_router_replicas_take_disjoint_shares_and_a_survivor_takes_all(
        cluster: DevCluster, loop: asyncio.AbstractEventLoop) -> None:
    addresses = {role: [f"10.8.{j}.{i}" for i in range(1, 7)] for j, role in enumerate(PORTS)}
    services = {role: f"part-{role}" for role in PORTS}
    ready = {"ready": True, "serving": True, "terminating": False}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        [endpoint_slice(services[role], PORTS[role], [{"addresses": [a]} for a in addresses[role]])
         for role in PORTS]
        + [endpoint_slice("part-router", 50051, router_endpoints({"router-1": ready, "router-2": ready}))]))
    kube = connect(cluster)
    routers = {pod: EndpointSliceWatcher(NS, services, PORTS, kube=kube, watch_timeout_s=2,
                                         peers=Peers("part-router", pod)) for pod in ("router-1", "router-2")}
    for w in routers.values():
        on_loop(loop, lambda: started(w))
    everything = {role: sorted(f"{a}:{PORTS[role]}" for a in addresses[role]) for role in PORTS}

    def split() -> bool:
        one, two = (w.current() for w in routers.values())
        return all(one[role] and two[role] and not set(one[role]) & set(two[role])
                   and sorted(one[role] + two[role]) == everything[role] for role in PORTS)

    try:
        wait_for("each router a disjoint share, together every worker", split)
        before, draining = routers["router-2"].current(), routers["router-1"].current()
        # router-1's pod is deleted: its endpoint turns terminating, not ready
        cluster.kubectl("patch", "endpointslice", "part-router", "-n", NS, "--type", "merge", "-p", json.dumps(
            {"endpoints": router_endpoints({"router-1": {"ready": False, "serving": True, "terminating": True},
                                            "router-2": ready})}))
        wait_for("router-2 schedules every worker", lambda: routers["router-2"].current() == everything)
        assert set(before["target"]) < set(everything["target"])  # it did take router-1's share
        assert routers["router-1"].current() == draining  # which finishes its requests there meanwhile
        # then its endpoint is gone, and a new router-3 is ready: the shares split again
        cluster.kubectl("patch", "endpointslice", "part-router", "-n", NS, "--type", "merge", "-p", json.dumps(
            {"endpoints": router_endpoints({"router-3": ready, "router-2": ready})}))
        wait_for("router-2 hands a share to router-3",
                 lambda: len(routers["router-2"].current()["target"]) == len(everything["target"]) // 2)
    finally:
        for w in routers.values():
            on_loop(loop, w.aclose)
        on_loop(loop, kube.aclose)
        cluster.kubectl("delete", "endpointslice", "-n", NS, *services.values(), "part-router", check=False)
