"""Autoscaling through the operator on a real control plane, with a real gRPC Stats server.

The operator runs as a subprocess (admin credentials, one watched namespace) and polls a scripted
`specd.v1.Specd/Stats` server on loopback, standing in for the router Service (the pods on kwok
nodes run nothing). The schema is checked by the API server itself; then one resource goes
through: autoscaling off (the scale subresource owns the target replicas, figures change
nothing), on (the operator owns them: idle figures shrink the pools after the down window,
`kubectl scale` is ignored, a loaded router grows the target pool within the up window, each
change an event, the reason in the status).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from k8s_support import OperatorProcess, cell, condition, get, wait_for

from specd.devcluster.cluster import DevCluster
from specd.proto.v1 import serving_pb2, serving_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "autoscaling.yaml"
NS = "specd-autoscale"
NAME = "demo-autoscaling"  # the example's
POLL_S = 0.5  # --stats-seconds
UP_S, DOWN_S = 2, 4  # the windows the test sets (the example's are demo values for real pods)
# The draft replica drafts for every iteration, busy as much as the pool aims for (the example's
# utilisation): the draft pool holds while the load on the targets moves.
DRAFTING = {"live_drafts": 1, "speculating_fraction": 1.0, "draft_busy_fraction": 0.6,
            "drafted_tokens_per_s": 40.0}
IDLE = serving_pb2.RouterStats(live_targets=1, running_requests=1, **DRAFTING)
LOADED = serving_pb2.RouterStats(queued_requests=12, running_requests=4, live_targets=1,
                                 goodput_tokens_per_s=90.0, **DRAFTING)
NOT_SPECULATING = serving_pb2.RouterStats(live_targets=1, live_drafts=1)  # k = 0 throughout


class StatsRouter(serving_pb2_grpc.SpecdServicer):
    """Answers Stats with whatever figures the test sets."""

    def __init__(self) -> None:
        self.stats = IDLE

    def Stats(self, request: Any, context: grpc.ServicerContext) -> serving_pb2.RouterStats:
        return self.stats


@pytest.fixture(scope="module")
def router() -> Iterator[tuple[StatsRouter, str]]:
    servicer = StatsRouter()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    serving_pb2_grpc.add_SpecdServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="module")
def cluster(dev_cluster: DevCluster) -> Iterator[DevCluster]:
    """The CRD, the namespace and a bound claim for the example's pvc://specd-models URIs."""
    dev_cluster.kubectl("apply", "-f", str(REPO / "manifests" / "crd.yaml"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/specdecodingservices.specd.io")
    dev_cluster.kubectl("create", "namespace", NS)
    volume = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": NS},
              "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                       "storageClassName": "", "hostPath": {"path": "/srv/specd-models"},
                       "claimRef": {"namespace": NS, "name": "specd-models"}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "specd-models", "namespace": NS},
             "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": NS,
                      "resources": {"requests": {"storage": "1Gi"}}}}
    dev_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([volume, claim]))
    wait_for("the namespace's default ServiceAccount", lambda: dev_cluster.kubectl(
        "get", "serviceaccount", "default", "-n", NS, check=False).returncode == 0)
    yield dev_cluster
    # the CRD stays (the same as the chart's, which other modules of the session install)
    dev_cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    dev_cluster.kubectl("delete", "pv", NS, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(cluster: DevCluster, router: tuple[StatsRouter, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", router[1],
                           namespaces=[NS], resync_seconds=30, stats_seconds=POLL_S)
    proc.start()
    yield proc
    proc.stop()


def example(**autoscaling: Any) -> str:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"]["autoscaling"].update(autoscaling)
    return yaml.safe_dump(body)


def dry_run(cluster: DevCluster, text: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("create", "-n", NS, "--dry-run=server", "-o", "json", "-f", "-",
                           input=text, check=False)


def test_schema_accepts_the_example_with_its_defaults(cluster: DevCluster) -> None:
    created = dry_run(cluster, EXAMPLE.read_text())
    assert created.returncode == 0, created.stderr
    autoscaling = json.loads(created.stdout)["spec"]["autoscaling"]
    assert autoscaling["enabled"] is True and autoscaling["target"]["maxReplicas"] == 2
    assert autoscaling["target"]["ttftSeconds"] == 0  # defaulted by the API server


INVALID = [
    ({"target": {"minReplicas": 3, "maxReplicas": 2}}, "spec.autoscaling.target.minReplicas"),
    ({"draft": {"minReplicas": 2, "maxReplicas": 1}}, "spec.autoscaling.draft.minReplicas"),
    ({"target": {"minReplicas": 5}}, "spec.autoscaling.target.minReplicas"),  # default max: 4
    ({"target": {"maxReplicas": 0}}, "spec.autoscaling.target.maxReplicas"),
    ({"target": {"queuePerReplica": 0.1}}, "spec.autoscaling.target.queuePerReplica"),
    ({"draft": {"utilisation": 1.5}}, "spec.autoscaling.draft.utilisation"),
    ({"scaleUpWindowSeconds": -1}, "spec.autoscaling.scaleUpWindowSeconds"),
    ({"scaleDownWindowSeconds": 7200}, "spec.autoscaling.scaleDownWindowSeconds"),
]


@pytest.mark.parametrize("autoscaling,field", INVALID, ids=[i[1].split(".", 2)[2] + str(n)
                                                            for n, i in enumerate(INVALID)])
def test_schema_refuses_bad_bounds_naming_the_field(cluster: DevCluster, autoscaling: dict,
                                                     field: str) -> None:
    result = dry_run(cluster, yaml.safe_dump({
        "apiVersion": "specd.io/v1alpha1", "kind": "SpecDecodingService",
        "metadata": {"name": "bad"},
        "spec": {"target": {"model": {"uri": "/m"}}, "draft": {"method": "none"},
                 "scheduling": {"speculation": {"mode": "none"}}, "autoscaling": autoscaling}}))
    assert result.returncode != 0, f"{autoscaling} was accepted"
    assert "is invalid" in result.stderr and field in result.stderr, result.stderr


def body(cluster: DevCluster) -> dict:
    found = get(cluster, "sds", NAME, "-n", NS)
    assert found is not None
    return found


def settled(cluster: DevCluster) -> dict | None:
    b = get(cluster, "sds", NAME, "-n", NS) or {}
    ok = (b.get("status", {}).get("observedGeneration") == b.get("metadata", {}).get("generation")
          and condition(b, "Ready").get("status") == "True"
          and condition(b, "Progressing").get("status") == "False")
    return b if ok else None


def replicas(cluster: DevCluster) -> tuple[int, int]:
    """(target, draft) replicas the Deployments are asked for."""
    def of(role: str) -> int:
        found = get(cluster, "deployment", f"{NAME}-{role}", "-n", NS)
        assert found is not None
        return int(found["spec"]["replicas"])
    return of("target"), of("draft")


def events(cluster: DevCluster) -> list[dict]:
    return get(cluster, "events", "-n", NS, "--field-selector",
               f"involvedObject.kind=SpecDecodingService,involvedObject.name={NAME}")["items"]


# the operator's other events: Reconciled, ChildRestored, Pruned and condition transitions
OTHER_EVENTS = re.compile(r"Reconciled|ChildRestored|Pruned|[A-Za-z]+(True|False)")


def decisions(cluster: DevCluster) -> dict[str, dict]:
    """The autoscaling decisions' events by name."""
    return {e["metadata"]["name"]: e for e in events(cluster)
            if not OTHER_EVENTS.fullmatch(e["reason"])}


def decision_events(cluster: DevCluster, before: dict[str, dict]) -> list[dict]:
    """The decision events posted since `before`: Normal, a CamelCase reason, the figures."""
    new = [e for name, e in decisions(cluster).items() if name not in before]
    for event in new:
        assert event["type"] == "Normal" and re.fullmatch(r"[A-Z][A-Za-z]+", event["reason"])
        assert event["message"], event
    return new


def column(cluster: DevCluster, name: str) -> str:
    return cell(cluster.kubectl("get", "sds", NAME, "-n", NS).stdout, NAME, name)


def test_off_the_scale_subresource_owns_the_target_replicas(
        cluster: DevCluster, operator: OperatorProcess, router: tuple[StatsRouter, str]) -> None:
    router[0].stats = IDLE
    cluster.kubectl("apply", "-n", NS, "-f", "-",
                    input=example(enabled=False, scaleUpWindowSeconds=UP_S,
                                  scaleDownWindowSeconds=DOWN_S))
    b = wait_for("Ready with autoscaling off", lambda: settled(cluster), 90, operator.tail)
    assert (condition(b, "Autoscaling")["status"], condition(b, "Autoscaling")["reason"]) == (
        "False", "Disabled")
    assert "autoscaling" not in b["status"] and column(cluster, "SCALING") == "Disabled"
    cluster.kubectl("scale", "sds", NAME, "-n", NS, "--replicas=2")
    wait_for("target Deployment scaled to 2", lambda: replicas(cluster) == (2, 1), 30)
    time.sleep(DOWN_S + 4 * POLL_S)  # idle figures for longer than the down window: no effect
    assert replicas(cluster) == (2, 1)
    wait_for("TARGET column 2", lambda: column(cluster, "TARGET") == "2", 30)


def test_on_the_operator_owns_both_pools(cluster: DevCluster, operator: OperatorProcess,
                                         router: tuple[StatsRouter, str]) -> None:
    def scaled_to(target: int, draft: int) -> dict | None:
        b = body(cluster)
        decided = b["status"].get("autoscaling", {})
        return b if (replicas(cluster) == (target, draft) == (
            decided.get("targetReplicas"), decided.get("draftReplicas")) and settled(cluster)
            ) else None

    router[0].stats = IDLE
    before = decisions(cluster)
    cluster.kubectl("patch", "sds", NAME, "-n", NS, "--type=merge",
                    "-p", json.dumps({"spec": {"autoscaling": {"enabled": True}}}))
    b = wait_for("Autoscaling True", lambda: condition(body(cluster), "Autoscaling").get(
        "status") == "True" and body(cluster), 30, operator.tail)
    assert "ignored" in condition(b, "Autoscaling")["message"]
    # a light load: the target pool shrinks from the spec's 2 once the down window has passed
    b = wait_for("target pool shrunk to 1", lambda: scaled_to(1, 1), DOWN_S + 15,
                 operator.tail)
    (shrunk,) = decision_events(cluster, before)
    assert b["status"]["autoscaling"]["lastScaleTime"]

    cluster.kubectl("scale", "sds", NAME, "-n", NS, "--replicas=2")  # ignored while on
    time.sleep(4 * POLL_S)
    assert replicas(cluster) == (1, 1) and body(cluster)["spec"]["target"]["replicas"] == 2

    router[0].stats = LOADED
    before = decisions(cluster)
    loaded_at = time.monotonic()
    wait_for("loaded target pool grown to 2", lambda: scaled_to(2, 1), UP_S + 15,
             operator.tail)
    took = time.monotonic() - loaded_at
    assert UP_S - 2 * POLL_S <= took <= UP_S + 10, took  # held for the up window, not longer
    (grown,) = decision_events(cluster, before)
    assert grown["reason"] != shrunk["reason"]
    assert str(LOADED.queued_requests) in grown["message"]  # the figures that drove it

    def latest_reason_shown() -> bool:
        b = body(cluster)
        return (condition(b, "Autoscaling").get("reason") == b["status"]["autoscaling"]["reason"]
                == column(cluster, "SCALING"))

    wait_for("the latest reason in the condition and the SCALING column", latest_reason_shown, 10)
    assert (column(cluster, "TARGET"), column(cluster, "DRAFT")) == ("2", "1")

    # no speculation and no load: both pools go down to their minimum, not inside the window
    router[0].stats = NOT_SPECULATING
    before = decisions(cluster)
    idle_at = time.monotonic()
    wait_for("both pools at their minimum", lambda: scaled_to(1, 0), DOWN_S + 15,
             operator.tail)
    assert time.monotonic() - idle_at >= DOWN_S - 2 * POLL_S
    assert 1 <= len(decision_events(cluster, before)) <= 2  # one decision per pool at most

    # a restarted operator starts from the recorded decision (1, 0), not from the spec's (2, 1):
    # the same figures change nothing
    operator.stop()
    before = decisions(cluster)
    operator.start()
    time.sleep(8 * POLL_S + 3)  # start-up, then polls
    assert replicas(cluster) == (1, 0) and not decision_events(cluster, before), operator.tail()
