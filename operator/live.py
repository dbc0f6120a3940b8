"""Live speculation figures: the router's own figures copied into the resource's status.

The router knows the acceptance rate, the goodput and the speculation length it is choosing;
the operator asks each Ready resource's router for them (`specd.v1.Specd/Stats` on the router
Service) and merges `acceptanceRate`, `goodput` (tokens/s streamed over the last minute) and
`currentK` into the status when they moved, so that `kubectl get sds` shows them. A router that
cannot be reached leaves the figures as they were: they are live hints, not conditions.
The same poll feeds the autoscaler of a resource that enables it (`scaling.Scaling`).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from specd.kube import Kube, custom_kind
from specd.operator import crd, status
from specd.operator import names as n
from specd.operator.scaling import Scaling

log = logging.getLogger(__name__)
custom_kind(crd.GROUP, crd.VERSION, crd.KIND, crd.PLURAL)


def figures(stats: Any) -> dict[str, Any]:
    """Status fields from a RouterStats message (acceptance removed while nothing was drafted)."""
    return {"acceptanceRate": round(stats.acceptance_rate, 3) if stats.drafted_tokens else None,
            "goodput": round(stats.goodput_tokens_per_s, 1),
            "currentK": stats.current_k}


def ready(body: dict[str, Any]) -> bool:
    return any(c.get("type") == status.READY and c.get("status") == "True"
               for c in (body.get("status") or {}).get("conditions", []))


class LiveFigures:
    def __init__(self, kube: Kube, address_template: str = n.ROUTER_ADDRESS_TEMPLATE,
                 timeout_s: float = 2.0, scaling: Scaling | None = None) -> None:
        self.kube = kube
        self.address_template = address_template
        self.timeout_s = timeout_s
        self.scaling = scaling

    async def address(self, body: dict[str, Any]) -> str | None:
        """The router's address from the template; None while its Service has no ClusterIP."""
        meta, spec = body["metadata"], crd.apply_defaults(body["spec"])
        service = n.child_name(meta["name"], n.ROUTER)
        cluster_ip = None
        if "{cluster_ip}" in self.address_template:
            found = await self.kube.get("Service", meta["namespace"], service)
            cluster_ip = ((found or {}).get("spec") or {}).get("clusterIP")
            if not cluster_ip or cluster_ip == "None":
                return None
        return self.address_template.format(service=service, namespace=meta["namespace"],
                                            port=spec["router"]["service"]["port"],
                                            cluster_ip=cluster_ip)

    async def fetch(self, address: str) -> Any | None:
        """The router's RouterStats; None when it did not answer."""
        from specd.proto.v1 import serving_pb2, serving_pb2_grpc

        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stats = await serving_pb2_grpc.SpecdStub(channel).Stats(serving_pb2.RouterStatsRequest(),
                                                                        timeout=self.timeout_s)
        except grpc.RpcError as exc:
            log.debug("router %s did not answer Stats: %s", address, exc.code())
            return None
        return stats

    async def refresh(self, body: dict[str, Any]) -> None:
        """Copy the router's figures into the status of one resource (when it is Ready), and
        hand them to its autoscaler."""
        if not ready(body) or body["metadata"].get("deletionTimestamp"):
            return
        address = await self.address(body)
        stats = await self.fetch(address) if address else None
        new = figures(stats) if stats is not None else None
        if new is not None and status.status_changed(body.get("status") or {}, new):
            meta = body["metadata"]
            await self.kube.patch_status(crd.KIND, meta["namespace"], meta["name"], new)
        if self.scaling is not None:
            await self.scaling.observe(body, stats)
