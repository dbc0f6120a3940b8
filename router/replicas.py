"""The worker replicas the router knows: channels, liveness, load, and placement.

A replica that fails a call is marked down and probed with grpc.health.v1 until it serves
again. Placement pins a request to the live replica of a role with the fewest pinned requests
(KV affinity: it stays there while it lives, unless that replica goes away).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specd.proto import server as grpc_server
from specd.proto.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)
PROBE_INTERVAL_S = 0.5
# How long the channel of a replica dropped by discovery stays open: an iteration that picked it
# just before may still call it, and must get the worker's own answer (its tokens, or UNAVAILABLE
# once it is gone, which fails the requests over) rather than "Channel is closed".
DRAIN_S = 60.0


@dataclass(eq=False)
class Replica:
    role: str
    address: str
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.DraftWorkerStub | worker_pb2_grpc.TargetWorkerStub
    info: worker_pb2.ModelInfo | None = None
    live: bool = False
    pinned: set[str] = field(default_factory=set)  # ids of requests whose KV lives here
    orphans: set[str] = field(default_factory=set)  # requests to release once it answers again
    # requests evicted from here for lack of KV room: not scheduled until room frees up
    kv_waiting: set[str] = field(default_factory=set)

    async def close(self) -> None:
        await self.channel.close()


class Pinnable(Protocol):
    address: str
    pinned: set[str]


P = TypeVar("P", bound=Pinnable)


def least_pinned(candidates: list[P]) -> P:
    """The replica holding the fewest requests (ties: by address), for a new request's KV cache."""
    return min(candidates, key=lambda r: (len(r.pinned), r.address))


def drafts_for(target: str, targets: list[P], drafts: list[P]) -> list[P]:
    """The draft replicas that serve `target`'s requests: the drafts are dealt out to the targets
    (by address order), so that a target's batch drafts on as few draft replicas as possible and
    an iteration waits on one Propose call instead of the slowest of several shared ones."""
    ordered_targets = sorted(t.address for t in targets)
    ordered_drafts = sorted(drafts, key=lambda d: d.address)
    if not ordered_drafts or target not in ordered_targets:
        return ordered_drafts
    i, n = ordered_targets.index(target), len(ordered_targets)
    return ordered_drafts[i::n] if len(ordered_drafts) >= n else [ordered_drafts[i % len(ordered_drafts)]]


class ReplicaPool:
    """All replicas of both roles; `set_endpoints` follows discovery."""

    def __init__(self) -> None:
        self.replicas: dict[str, Replica] = {}  # address -> replica
        self._probes: dict[str, asyncio.Task] = {}
        self._draining: set[Replica] = set()  # dropped by discovery, channel still open
        self.changed = asyncio.Event()  # set whenever a replica comes or goes

    def live(self, role: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.role == role and r.live]

    def place(self, role: str, target: str | None = None) -> Replica | None:
        """A replica for a new request: the least pinned live one (for a draft, among those that
        serve `target`)."""
        candidates = self.live(role)
        if role == "draft" and target is not None:
            candidates = drafts_for(target, self.live("target"), candidates)
        return least_pinned(candidates) if candidates else None

    def set_endpoints(self, endpoints: dict[str, list[str]]) -> list[Replica]:
        """Add new addresses (probed before use), drop vanished ones; returns the dropped replicas."""
        wanted = {(role, address) for role, addresses in endpoints.items() for address in addresses}
        dropped = [r for r in self.replicas.values() if (r.role, r.address) not in wanted]
        for replica in dropped:
            self._forget(replica, drain_s=DRAIN_S)
        for role, address in wanted:
            if address not in self.replicas:
                channel = grpc.aio.insecure_channel(address, options=grpc_server.CHANNEL_OPTIONS)
                stub_type = worker_pb2_grpc.DraftWorkerStub if role == "draft" else worker_pb2_grpc.TargetWorkerStub
                replica = Replica(role, address, channel, stub_type(channel))
                # back after a drop (e.g. a readiness flap): the requests it held then have moved
                # away, and their caches there are released before it serves again
                for gone in self._draining:
                    if gone.address == address:
                        replica.orphans |= gone.pinned | gone.orphans
                self.replicas[address] = replica
                self._probe(replica)
        self.changed.set()
        return dropped

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.live:
            log.warning("%s worker %s is down: %s", replica.role, replica.address, reason)
        replica.live = False
        replica.orphans |= replica.pinned
        replica.pinned.clear()
        self.changed.set()
        if replica.address in self.replicas:
            self._probe(replica)

    def _forget(self, replica: Replica, drain_s: float = 0.0) -> None:
        self.replicas.pop(replica.address, None)
        probe = self._probes.pop(replica.address, None)
        if probe:
            probe.cancel()
        replica.live = False
        if drain_s:
            self._draining.add(replica)
            asyncio.get_running_loop().call_later(drain_s, self._close_drained, replica)
        else:
            asyncio.ensure_future(replica.close())

    def _close_drained(self, replica: Replica) -> None:
        if replica in self._draining:
            self._draining.discard(replica)
            asyncio.ensure_future(replica.close())

    def _probe(self, replica: Replica) -> None:
        task = self._probes.get(replica.address)
        if task is None or task.done():
            self._probes[replica.address] = asyncio.ensure_future(self._until_serving(replica))

    async def _until_serving(self, replica: Replica) -> None:
        health = health_pb2_grpc.HealthStub(replica.channel)
        while replica.address in self.replicas:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    replica.info = await replica.stub.Info(worker_pb2.InfoRequest(), timeout=10)
                    if replica.orphans:
                        await replica.stub.Release(worker_pb2.ReleaseRequest(request_ids=sorted(replica.orphans)),
                                                   timeout=10)
                        replica.orphans.clear()
                    replica.live = True
                    log.info("%s worker %s is serving", replica.role, replica.address)
                    self.changed.set()
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def close(self) -> None:
        for replica in list(self.replicas.values()):
            self._forget(replica)
        for replica in list(self._draining):
            self._close_drained(replica)
        await asyncio.sleep(0)
