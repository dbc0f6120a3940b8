"""Live figures: where the operator reaches a router and what it writes (the e2e test in
tests/k8s checks the whole path against a real router and API server)."""

from __future__ import annotations

import asyncio
from typing import Any

from specd.operator import live
from specd.proto.v1 import serving_pb2

BODY = {"metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {"target": {"model": {"uri": "/m"}}, "draft": {"method": "model", "model": {"uri": "/d"}}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


class _Services:
    """Answers Kube.get for the router Service only (as the API server would)."""

    def __init__(self, cluster_ip: str | None) -> None:
        self.cluster_ip = cluster_ip

    async def get(self, kind: str, namespace: str, name: str) -> dict | None:
        assert (kind, namespace, name) == ("Service", "team-a", "demo-router")
        return {"spec": {"clusterIP": self.cluster_ip}} if self.cluster_ip else None


def address(kube: Any, template: str = live.n.ROUTER_ADDRESS_TEMPLATE) -> str | None:
    return asyncio.run(live.LiveFigures(kube=kube, address_template=template).address(BODY))


def test_router_address_is_the_services_cluster_ip_or_the_given_template() -> None:
    assert address(_Services("10.96.4.7")) == "10.96.4.7:50051"
    assert address(_Services(None)) is None  # no Service yet
    assert address(None, "{service}.{namespace}.svc:{port}") == "demo-router.team-a.svc:50051"
    assert address(None, "127.0.0.1:{port}") == "127.0.0.1:50051"


def test_figures_leave_out_acceptance_until_drafts_were_verified() -> None:
    stats = serving_pb2.RouterStats(acceptance_rate=0.81234, goodput_tokens_per_s=312.345, current_k=5,
                                    drafted_tokens=40)
    assert live.figures(stats) == {"acceptanceRate": 0.812, "goodput": 312.3, "currentK": 5}
    assert live.figures(serving_pb2.RouterStats(current_k=0))["acceptanceRate"] is None


def test_only_ready_resources_are_asked() -> None:
    assert live.ready(BODY)
    assert not live.ready({**BODY, "status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert not live.ready({**BODY, "status": {}})
