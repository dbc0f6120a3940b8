"""Two router replicas on real pods: they partition the workers and serve plain decoding's tokens.

`manifests/examples/demo.yaml` with 2 targets, 2 drafts and `router.replicas: 2`, on the chart
and models the other real-node modules share (conftest.py `real_node_chart`). Each router learns
the ready router pods from its Service's EndpointSlices and its own name from SPECD_POD_NAME, and
logs the workers it schedules whenever its share changes (router/k8s_discovery.py); the shares
come from router/partition.py (docs/scheduling.md, "Router scale-out"). On the real pods:

- each router schedules one target and one draft: the two shares are disjoint and cover both
  pools, equal what `partition.share` computes from the pod names, and each router's Stats count
  exactly its share's workers as live;
- greedy requests through the router Service, a new connection each until both routers have
  finished some, equal plain decoding, and each router drafted on its own draft;
- one router pod deleted: requests through the Service right after it still succeed, the other
  router takes over every worker, and once the Deployment's replacement is ready the two split
  the pool again.
"""

from __future__ import annotations

import ast
import re
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import yaml
from k8s_support import NS, REPO, diagnose, plain_greedy, router_address, serving, wait_for

from specd.devcluster.cluster import DevCluster
from specd.operator import names
from specd.router.partition import share

if TYPE_CHECKING:
    from specd.client import RouterStats

pytestmark = pytest.mark.real_node

NAME = "demo-routers"
ROLES = ("target", "draft")
PROMPT, NEW_TOKENS = "def parse(line):", 24
LONG_TOKENS = 96  # a stream under way while its router leaves
DELETION_S = 6  # requests back to back through the Service this long after a router pod's deletion
# router/k8s_discovery.py's line on each change of a router's share
SHARE = re.compile(r"router (\S+) schedules (\{.*\}) \(routers: (\[.*\])\)$")
Share = dict[str, list[str]]  # role -> "ip:port" of the workers a router schedules


@pytest.fixture(scope="module")
def routers(real_node_chart: DevCluster) -> Iterator[DevCluster]:
    cluster = real_node_chart
    example = yaml.safe_load((REPO / "manifests" / "examples" / "demo.yaml").read_text())
    example["metadata"]["name"] = NAME
    example["spec"]["target"]["replicas"] = example["spec"]["draft"]["replicas"] = 2
    example["spec"]["router"] = {"replicas": 2}
    cluster.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(example))
    for role in (*ROLES, "router"):
        wait_for(f"two {role} pods serving", lambda role=role: serving(cluster, role, 2, NAME), 420,
                 lambda: diagnose(cluster))
    yield cluster
    cluster.kubectl("delete", "sds", NAME, "-n", NS, "--wait=true", "--timeout=120s", check=False)


def shares(cluster: DevCluster, pod: str) -> list[tuple[Share, list[str]]]:
    """Every share router `pod` logged, in order: (its workers, the routers it counted)."""
    log = cluster.kubectl("logs", "-n", NS, pod).stdout
    return [(ast.literal_eval(m[2]), ast.literal_eval(m[3]))
            for m in map(SHARE.search, log.splitlines()) if m and m[1] == pod]


def ips(addresses: list[str]) -> set[str]:
    return {address.rsplit(":", 1)[0] for address in addresses}


def pod_ips(cluster: DevCluster, role: str) -> set[str]:
    return {p["status"]["podIP"] for p in serving(cluster, role, 2, NAME) or []}


def stats(pod: dict) -> RouterStats:
    """The router pod's own Stats, on its pod IP (not through the Service)."""
    from specd.client import Client

    with Client(f"{pod['status']['podIP']}:{names.ROUTER_PORT}", timeout=30) as client:
        return client.stats()


def assert_partitioned(cluster: DevCluster) -> dict[str, Share]:
    """The two serving routers' latest shares, once each counts both: disjoint, covering, as
    `partition.share` computes them, and matching each router's own count of live workers."""
    pods = {p["metadata"]["name"]: p for p in serving(cluster, "router", 2, NAME) or []}
    assert len(pods) == 2, pods.keys()

    def settled() -> dict[str, Share] | None:
        latest = {name: (shares(cluster, name) or [({}, [])])[-1] for name in pods}
        return {name: s for name, (s, counted) in latest.items()} \
            if all(counted == sorted(pods) for _, counted in latest.values()) else None

    found = wait_for("both routers counting both", settled, 120, lambda: diagnose(cluster))
    for role in ROLES:
        mine = [set(found[name][role]) for name in pods]
        assert mine[0] and mine[1] and not mine[0] & mine[1], found
        assert ips(list(mine[0] | mine[1])) == pod_ips(cluster, role), (found, pod_ips(cluster, role))
    everything = {role: sorted({a for s in found.values() for a in s[role]}) for role in ROLES}
    for name, pod in pods.items():
        assert found[name] == share(everything, list(pods), name), (name, found)
        wait_for(f"{name}'s Stats counting its share live", lambda pod=pod, name=name: (
            (s := stats(pod)).live_targets, s.live_drafts) == tuple(len(found[name][r]) for r in ROLES), 60)
    return found


def test_two_routers_partition_the_workers_and_serve_plain_decodings_tokens(routers: DevCluster) -> None:
    from specd.client import Client

    cluster = routers
    started = time.monotonic()
    before = assert_partitioned(cluster)
    pods = serving(cluster, "router", 2, NAME)
    reference = plain_greedy(PROMPT, NEW_TOKENS)

    # Through the Service: kube-proxy picks a router per connection, so a new client each time.
    finished = {p["metadata"]["name"]: stats(p).finished_requests for p in pods}
    sent = 0
    while sent < 16 and not all(stats(p).finished_requests > finished[p["metadata"]["name"]] for p in pods):
        with Client(router_address(cluster, NAME), timeout=120, retries=0) as client:
            assert client.generate(PROMPT, NEW_TOKENS, ignore_eos=True).tokens == reference
        sent += 1
    served = {p["metadata"]["name"]: stats(p).finished_requests - finished[p["metadata"]["name"]] for p in pods}
    assert all(served.values()), f"{sent} requests through the Service, by router: {served}"
    acceptance = {p["metadata"]["name"]: stats(p).acceptance_rate for p in pods}
    # each router verified draft tokens (None before any), from the draft of its share
    assert None not in acceptance.values(), acceptance

    # One router leaves under a stream it admitted: it finishes that stream (drain), the other
    # takes over every worker, and the Service keeps serving, with no client retry, meanwhile.
    victim, survivor = sorted(served)
    (victim_pod,) = [p for p in pods if p["metadata"]["name"] == victim]
    seen = len(shares(cluster, survivor))
    long_reference = plain_greedy(PROMPT, LONG_TOKENS)
    first_token, streamed = threading.Event(), list[int]()

    def stream() -> None:
        with Client(f"{victim_pod['status']['podIP']}:{names.ROUTER_PORT}", timeout=180, retries=0) as client:
            for chunk in client.stream(PROMPT, LONG_TOKENS, ignore_eos=True):
                streamed.extend(chunk.tokens)
                first_token.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert first_token.wait(120), "no token from the router about to be deleted"
    cluster.kubectl("delete", "pod", victim, "-n", NS, "--wait=false")
    deleted, streamed_before = time.monotonic(), len(streamed)
    after_deletion: list[str] = []  # each request's outcome, through the Service, back to back
    while time.monotonic() - deleted < DELETION_S or len(after_deletion) < 3:
        try:
            with Client(router_address(cluster, NAME), timeout=120, retries=0) as client:
                tokens = client.generate(PROMPT, NEW_TOKENS, ignore_eos=True).tokens
            after_deletion.append("ok" if tokens == reference else f"{tokens} != plain decoding")
        except Exception as exc:  # counted: none may fail
            after_deletion.append(f"{time.monotonic() - deleted:.1f}s after the deletion: {exc}")
    thread.join(180)
    assert streamed == long_reference, f"the deleted router's stream: {streamed}"
    assert set(after_deletion) == {"ok"}, after_deletion
    alone = wait_for("the remaining router scheduling every worker", lambda: next(
        (s for s, counted in shares(cluster, survivor)[seen:] if counted == [survivor]), None), 60,
        lambda: diagnose(cluster))
    assert {role: ips(alone[role]) for role in ROLES} == {role: pod_ips(cluster, role) for role in ROLES}, alone

    # The Deployment's replacement: once ready, the two split the pool again.
    wait_for("a replacement router serving", lambda: (found := serving(cluster, "router", 2, NAME))
             and victim not in {p["metadata"]["name"] for p in found}, 180, lambda: diagnose(cluster))
    after = assert_partitioned(cluster)
    assert survivor in after
    print(f"\nrouter replicas e2e: shares {before}; {sent} requests through the Service ({served} by router); "
          f"{victim} deleted under a stream ({streamed_before} of {LONG_TOKENS} tokens streamed), "
          f"{len(after_deletion)} requests in the {DELETION_S}s after it; "
          f"{survivor} alone scheduled {alone}; after the replacement: {after}; "
          f"{deleted - started:.0f}s to the deletion, {time.monotonic() - deleted:.0f}s after it")
