"""Worker discovery in a cluster: watch the EndpointSlices of the worker Services.

`EndpointSliceWatcher` keeps, per role, the sorted "ip:port" list of the ready endpoints of that
role's (headless) Service, and tells subscribers whenever it changes, so scaling a pool needs no
router restart. A task on the router's event loop lists once, then watches from the list's
resourceVersion (specd.kube: lightkube parses the stream and re-opens the watch each time the
server ends it); an expired watch (410 Gone) relists, a failed or silent one re-watches from the
last event after a short backoff.

Protocol (what the router consumes):
  start()                                       on the running event loop: starts the task
  current() -> dict[role, list["ip:port"]]     every role of `service_names`, maybe empty
                                                until the first listing has landed
  subscribe(callback)                           callback(current) after each change, called
                                                on the event loop; not called on subscribe
  stop()                                        cancels the task (`aclose()` also awaits it)

With `peers` (this router's pod and its router Service, set by the operator through the
environment: `Peers.from_env()`), the watcher also follows the router Service's slices and
current() holds this router's share of the workers among the ready router pods
(specd.router.partition); one router's share is every worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from specd import contract
from specd.errors import SpecdError
from specd.kube import Kube, KubeError
from specd.router.partition import share

log = logging.getLogger(__name__)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
Endpoints = dict[str, list[str]]
ROUTERS = "router"  # the role of the router Service's slices: pod names of the ready routers


@dataclass(frozen=True)
class Peers:
    """Who this router is among the replicas of its router Service."""

    service: str  # the router Service, whose EndpointSlices list the router pods
    pod: str  # this router's pod name

    @classmethod
    def from_env(cls) -> Peers | None:
        """From the variables the operator sets on router pods; None outside them (one router)."""
        service, pod = os.environ.get(contract.ROUTER_SERVICE_ENV), os.environ.get(contract.POD_NAME_ENV)
        return cls(service, pod) if service and pod else None


def ready_addresses(slice_: dict[str, Any], port: int) -> list[str]:
    """ "ip:port" of the ready endpoints of one EndpointSlice (ready unset counts as ready).

    A terminating endpoint (its pod is being deleted, e.g. by a scale-down) is left out even when
    ready: a Service that publishes not-ready addresses keeps `ready` true while the pod drains.
    The router then places nothing more there and moves its requests while the worker, still
    answering during its grace period, finishes the calls under way."""
    ipv6 = slice_.get("addressType") == "IPv6"
    out = []
    for endpoint in slice_.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        for address in endpoint.get("addresses", []):
            out.append(f"[{address}]:{port}" if ipv6 else f"{address}:{port}")
    return out


def ready_pods(slice_: dict[str, Any]) -> list[str]:
    """Pod names of the ready, not terminating endpoints of one EndpointSlice."""
    out = []
    for endpoint in slice_.get("endpoints") or []:
        conditions, pod = endpoint.get("conditions") or {}, (endpoint.get("targetRef") or {}).get("name")
        if pod and conditions.get("ready") is not False and conditions.get("terminating") is not True:
            out.append(pod)
    return out


class EndpointSliceWatcher:
    def __init__(self, namespace: str, service_names: dict[str, str], ports: dict[str, int],
                 kube: Kube | None = None, watch_timeout_s: int = 300,
                 retry_delay_s: float = 1.0, peers: Peers | None = None) -> None:
        if set(service_names) != set(ports):
            raise SpecdError(f"discovery: roles of services {sorted(service_names)} and ports "
                             f"{sorted(ports)} differ")
        self.namespace = namespace
        self.roles = {service: role for role, service in service_names.items()}
        self.ports = dict(ports)
        self.kube = kube  # None: connect on start (in-cluster, else the kubeconfig), close on stop
        self._owns_kube = kube is None
        self.watch_timeout_s = watch_timeout_s
        self.retry_delay_s = retry_delay_s
        self._slices: dict[str, tuple[str, list[str]]] = {}  # slice name -> (role, addresses)
        # replaced whole on each change, never mutated: current() may be read from any thread
        self._current: Endpoints = {role: [] for role in service_names}
        self._callbacks: list[Callable[[Endpoints], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.peers = peers
        watched = {*service_names.values(), *([peers.service] if peers else [])}
        self._labels = {SERVICE_NAME_LABEL: sorted(watched)}

    # --- protocol -----------------------------------------------------------------------------

    def current(self) -> Endpoints:
        return {role: list(addresses) for role, addresses in self._current.items()}

    def subscribe(self, callback: Callable[[Endpoints], None]) -> None:
        self._callbacks.append(callback)

    def start(self) -> None:
        """Follow the slices from a task on the running event loop (missing credentials fail here)."""
        if self.kube is None:
            self.kube = Kube.connect()
        self._task = asyncio.get_running_loop().create_task(self.run(self.kube), name="specd-endpointslices")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop, and wait until the watch is closed."""
        self.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- internals ----------------------------------------------------------------------------

    async def run(self, kube: Kube) -> None:
        """List, then watch, until cancelled."""
        try:
            resource_version: str | None = None
            while True:
                try:
                    if resource_version is None:
                        resource_version = await self._relist(kube)
                    resource_version = await self._watch(kube, resource_version)
                except KubeError as exc:
                    if exc.status == 410:  # expired: relist
                        resource_version = None
                        continue
                    log.warning("EndpointSlice watch failed, retrying: %s", exc)
                    await asyncio.sleep(self.retry_delay_s)
                except Exception as exc:  # e.g. an object the client could not decode
                    log.warning("EndpointSlice watch interrupted, retrying: %s", exc)
                    await asyncio.sleep(self.retry_delay_s)
        finally:
            if self._owns_kube:
                await kube.aclose()

    async def _relist(self, kube: Kube) -> str:
        items, resource_version = await kube.list_at("EndpointSlice", self.namespace, self._labels)
        self._slices = {}
        for item in items:
            self._store(item)
        self._publish()
        return resource_version

    async def _watch(self, kube: Kube, resource_version: str) -> str:
        """Follow the watch; the resourceVersion to resume from once nothing arrived for longer
        than a watch lasts (a connection that died silently)."""
        events = kube.watch("EndpointSlice", self.namespace, self._labels, resource_version,
                            server_timeout=self.watch_timeout_s)
        try:
            while True:
                try:
                    kind, obj = await asyncio.wait_for(events.__anext__(), self.watch_timeout_s + 30)
                except asyncio.TimeoutError:
                    return resource_version
                resource_version = obj["metadata"]["resourceVersion"]
                if kind == "DELETED":
                    self._slices.pop(obj["metadata"]["name"], None)
                elif kind in ("ADDED", "MODIFIED"):
                    self._store(obj)
                self._publish()
        finally:
            await events.aclose()

    def _store(self, slice_: dict[str, Any]) -> None:
        meta = slice_["metadata"]
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL, "")
        role = self.roles.get(service)
        if self.peers is not None and service == self.peers.service:
            self._slices[meta["name"]] = (ROUTERS, ready_pods(slice_))
        elif role is not None:
            self._slices[meta["name"]] = (role, ready_addresses(slice_, self.ports[role]))

    def _publish(self) -> None:
        endpoints: Endpoints = {role: [] for role in self._current}
        routers: list[str] = []
        for role, addresses in self._slices.values():
            (routers if role == ROUTERS else endpoints[role]).extend(addresses)
        endpoints = {role: sorted(set(a)) for role, a in endpoints.items()}
        if self.peers is not None:
            endpoints = share(endpoints, routers, self.peers.pod)
        if endpoints == self._current:
            return
        self._current = endpoints
        if self.peers is not None:
            # the addresses, not only their counts: which router owns which worker is what an
            # operator (and the real-node test) reads to check the routers' shares
            log.info("router %s schedules %s (routers: %s)", self.peers.pod, endpoints,
                     sorted({*routers, self.peers.pod}))
        for callback in list(self._callbacks):
            try:
                callback({role: list(a) for role, a in endpoints.items()})
            except Exception:  # a subscriber's bug must not stop discovery
                log.exception("endpoint subscriber failed")
