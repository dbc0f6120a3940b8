"""A terminating endpoint leaves the router's set (scale-down drain), against a real API server.

The EndpointSlice is written by the test, with the conditions the EndpointSlice controller gives
the endpoint of a pod being deleted: `ready: false, serving: true, terminating: true` for an
ordinary Service, and `ready: true, serving: true, terminating: true` for one that publishes
not-ready addresses (kwok finishes pod deletions at once, so a real pod never stays terminating
here; tests/k8s/test_real_node_autoscaling.py sees real pods terminate)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import yaml
from k8s_support import wait_for

from specd.devcluster.cluster import DevCluster
from specd.kube import Kube
from specd.router.k8s_discovery import SERVICE_NAME_LABEL, EndpointSliceWatcher, ready_addresses

NS, SERVICE, PORT = "specd-terminating", "drain-target", 50071


def endpoint(ip: str, ready: bool = True, terminating: bool = False) -> dict:
    return {"addresses": [ip], "conditions": {"ready": ready, "serving": ready or terminating,
                                              "terminating": terminating}}


def endpoint_slice(*endpoints: dict) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{SERVICE}-manual", "namespace": NS,
                         # not the controller's: it leaves a slice managed by someone else alone
                         "labels": {SERVICE_NAME_LABEL: SERVICE,
                                    "endpointslice.kubernetes.io/managed-by": "specd-tests"}},
            "ports": [{"name": "grpc", "port": PORT, "protocol": "TCP"}],
            "endpoints": list(endpoints)}


def test_terminating_endpoints_are_left_out_even_when_ready() -> None:
    slice_ = endpoint_slice(endpoint("10.0.0.1"), endpoint("10.0.0.2", ready=False, terminating=True),
                            endpoint("10.0.0.3", ready=True, terminating=True))
    assert ready_addresses(slice_, PORT) == [f"10.0.0.1:{PORT}"]


@pytest.fixture
def cluster(dev_cluster: DevCluster) -> Iterator[DevCluster]:
    dev_cluster.kubectl("create", "namespace", NS)
    dev_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NS},
         "spec": {"clusterIP": "None", "ports": [{"name": "grpc", "port": PORT}]}}))  # no selector
    yield dev_cluster
    dev_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_an_endpoint_turning_terminating_leaves_the_watchers_set(cluster: DevCluster) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro) -> object:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    async def start() -> tuple[Kube, EndpointSliceWatcher]:
        kube = Kube.connect(kubeconfig=str(cluster.kubeconfig))
        watcher = EndpointSliceWatcher(NS, {"target": SERVICE}, {"target": PORT}, kube=kube)
        watcher.start()
        return kube, watcher

    def apply(*endpoints: dict) -> None:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(endpoint_slice(*endpoints)))

    a, b, c = (f"10.0.0.{i}" for i in (1, 2, 3))
    apply(endpoint(a), endpoint(b), endpoint(c))
    kube, watcher = on_loop(start())
    seen: list[list[str]] = []
    watcher.subscribe(lambda current: seen.append(current["target"]))
    try:
        wait_for("three targets", lambda: watcher.current()["target"] == [f"{ip}:{PORT}" for ip in (a, b, c)])
        apply(endpoint(a), endpoint(b, ready=False, terminating=True), endpoint(c))  # an ordinary Service
        wait_for("b gone", lambda: watcher.current()["target"] == [f"{a}:{PORT}", f"{c}:{PORT}"])
        apply(endpoint(a), endpoint(b, ready=False, terminating=True),
              endpoint(c, ready=True, terminating=True))  # publishNotReadyAddresses keeps ready
        wait_for("c gone", lambda: watcher.current()["target"] == [f"{a}:{PORT}"])
        assert seen[-2:] == [[f"{a}:{PORT}", f"{c}:{PORT}"], [f"{a}:{PORT}"]]  # subscribers were told
    finally:
        on_loop(watcher.aclose())
        on_loop(kube.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
