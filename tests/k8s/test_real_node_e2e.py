"""specd the way a user runs it, on a real node: real images, real pods, real network.

The chart is installed with helm from the images `make images` built (the operator runs
in-cluster as the chart's Deployment, with its least-privilege ServiceAccount); the demo models
reach the workers through a PersistentVolumeClaim, as a user would provide a model;
`manifests/examples/demo.yaml` is applied unchanged. Then: a greedy generation through the
router's Service equals local plain decoding; live acceptance reaches the status; a second
target replica serves; a target pod deleted mid-stream loses and repeats no token; deleting the
resource removes every pod. Then `manifests/examples/self-speculative.yaml` (the target drafting
from its own early exit, no draft pool) serves the same tokens. The node advertises fake
nvidia.com/gpu (there is no GPU here): the workers run on the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from k8s_support import (
    NS,
    OPERATOR_NS,
    RELEASE,
    REPO,
    condition,
    diagnose,
    get,
    plain_greedy,
    pods,
    router_address,
    serving,
    wait_for,
)

from specd.devcluster import realnode
from specd.devcluster.cluster import DevCluster
from specd.devcluster.images import TAG

pytestmark = pytest.mark.real_node

PROMPT, NEW_TOKENS = "def parse(line):", 48


@pytest.fixture(scope="module")
def cluster(real_node_chart: DevCluster) -> Iterator[DevCluster]:
    """The chart installed from the local images, the demo models in a PVC of the namespace
    (conftest.py: shared with the other real-node modules of the session)."""
    yield real_node_chart


@pytest.fixture(scope="module")
def demo(cluster: DevCluster) -> dict:
    """manifests/examples/demo.yaml applied unchanged, followed to Ready on real pods."""
    cluster.kubectl("apply", "-n", NS, "-f", str(REPO / "manifests" / "examples" / "demo.yaml"))
    for role in ("target", "draft", "router"):
        wait_for(f"a {role} pod serving on the real node", lambda role=role: serving(cluster, role, 1),
                 300, lambda: diagnose(cluster))
    return wait_for("demo Ready", lambda: (b := get(cluster, "sds", "demo", "-n", NS))
                    and condition(b, "Ready").get("status") == "True" and b, 120, lambda: diagnose(cluster))


def test_operator_runs_in_cluster_with_the_charts_service_account(cluster: DevCluster) -> None:
    (pod,) = get(cluster, "pods", "-n", OPERATOR_NS)["items"]
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    wait_for("the operator pod ready", lambda: all(
        c["ready"] for c in get(cluster, "pod", pod["metadata"]["name"], "-n", OPERATOR_NS)["status"]
        .get("containerStatuses", [{"ready": False}])), 120, lambda: diagnose(cluster))
    assert pod["spec"]["containers"][0]["image"] == f"localhost/specd-operator:{TAG}"


def test_demo_example_serves_greedy_output_equal_to_plain_decoding(cluster: DevCluster, demo: dict) -> None:
    from specd.client import Client

    for role in ("target", "draft", "router"):
        (pod,) = serving(cluster, role, 1)
        assert pod["spec"]["containers"][0]["image"] == f"localhost/specd:{TAG}"
    with Client(router_address(cluster), timeout=120) as client:
        result = client.generate(PROMPT, NEW_TOKENS, ignore_eos=True)
    assert result.tokens == plain_greedy(PROMPT, NEW_TOKENS)
    assert result.usage.draft_tokens_proposed > 0  # speculation really ran through the draft pod


def test_live_acceptance_and_goodput_reach_the_status(cluster: DevCluster, demo: dict) -> None:
    from specd.client import Client

    with Client(router_address(cluster), timeout=120) as client:
        client.generate("import os\n", 32, ignore_eos=True)

    def reported() -> dict | None:
        status = (get(cluster, "sds", "demo", "-n", NS) or {}).get("status", {})
        return status if status.get("acceptanceRate") is not None and status.get("goodput") else None

    status = wait_for("acceptanceRate and goodput in the status", reported, 60, lambda: diagnose(cluster))
    assert 0 < status["acceptanceRate"] <= 1 and status["goodput"] > 0


def test_scaling_adds_a_real_target_that_serves(cluster: DevCluster, demo: dict) -> None:
    from specd.client import Client

    cluster.kubectl("scale", "sds", "demo", "-n", NS, "--replicas", "2")
    wait_for("two target pods serving", lambda: serving(cluster, "target", 2), 300, lambda: diagnose(cluster))
    with Client(router_address(cluster), timeout=60) as client:
        wait_for("the router sees both targets", lambda: client.stats().live_targets == 2, 60,
                 lambda: diagnose(cluster))


def test_deleting_a_target_pod_mid_stream_loses_and_repeats_no_token(cluster: DevCluster, demo: dict) -> None:
    """Two concurrent streams (the router places them on the two targets, least pinned first);
    one target pod is deleted once both streamed their first tokens: both still equal plain
    decoding, and the router logs that a request moved to the other target."""
    from specd.client import Client

    victims = [p["metadata"]["name"] for p in
               wait_for("two target pods serving", lambda: serving(cluster, "target", 2), 300,
                        lambda: diagnose(cluster))]
    started = threading.Barrier(3, timeout=120)
    outputs: dict[int, list[int]] = {}

    def stream(slot: int) -> None:
        tokens: list[int] = []
        with Client(router_address(cluster), timeout=180) as client:
            for chunk in client.stream(PROMPT, 96, ignore_eos=True):
                if not tokens:
                    started.wait()
                tokens.extend(chunk.tokens)
        outputs[slot] = tokens

    threads = [threading.Thread(target=stream, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    cluster.kubectl("delete", "pod", victims[0], "-n", NS, "--wait=false")
    for thread in threads:
        thread.join(timeout=240)
    reference = plain_greedy(PROMPT, 96)
    assert outputs == {0: reference, 1: reference}
    (router,) = serving(cluster, "router", 1)
    log = cluster.kubectl("logs", "-n", NS, router["metadata"]["name"]).stdout
    assert "moves to target" in log, log[-2000:]
    wait_for("the deployment replaced the deleted pod", lambda: (found := serving(cluster, "target", 2))
             and victims[0] not in {p["metadata"]["name"] for p in found}, 300, lambda: diagnose(cluster))


def test_deleting_the_resource_removes_every_pod(cluster: DevCluster, demo: dict) -> None:
    cluster.kubectl("delete", "sds", "demo", "-n", NS, "--wait=true", "--timeout=120s")
    wait_for("every demo pod gone", lambda: not pods(cluster), 180, lambda: diagnose(cluster))


def test_self_speculative_example_drafts_inside_the_target(cluster: DevCluster) -> None:
    """manifests/examples/self-speculative.yaml unchanged: Kangaroo drafting inside the target pod,
    no draft pod at all, and the tokens of plain decoding."""
    from specd.client import Client

    instance = "self-speculative"
    cluster.kubectl("apply", "-n", NS, "-f", str(REPO / "manifests" / "examples" / f"{instance}.yaml"))
    for role in ("target", "router"):
        wait_for(f"a {role} pod serving on the real node",
                 lambda role=role: serving(cluster, role, 1, instance), 300, lambda: diagnose(cluster))
    assert not pods(cluster, "draft", instance)
    assert get(cluster, "deployment", f"{instance}-draft", "-n", NS) is None
    with Client(router_address(cluster, instance), timeout=120) as client:
        result = client.generate(PROMPT, NEW_TOKENS, ignore_eos=True)
    assert result.tokens == plain_greedy(PROMPT, NEW_TOKENS)
    assert result.usage.draft_tokens_accepted > 0  # the early exit drafted, and the target kept some
    cluster.kubectl("delete", "sds", instance, "-n", NS, "--wait=true", "--timeout=120s")
