"""One reconciliation pass of a SpecDecodingService, and the per-resource serialisation of passes.

A full pass applies every child (server-side apply: creates what is missing, restores edited
fields, rolls Deployments whose template changed), deletes children the spec no longer wants,
then observes the Deployments and writes the status. A status pass only observes and writes.

Many triggers (the resource's own events, its children's events, the periodic resync) can ask
for a pass of the same resource at once: `Reconciler.run` keeps at most one pass running and one
queued per resource, merging further requests into the queued one, which reads the latest state
when it starts. Everything runs on Kopf's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from specd.kube import Kube, KubeError, custom_kind
from specd.operator import builders, crd, pools, status
from specd.operator import names as n

log = logging.getLogger(__name__)
custom_kind(crd.GROUP, crd.VERSION, crd.KIND, crd.PLURAL)


def utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class _Request:
    full: bool
    notes: list[str]


def _version(meta: dict[str, Any]) -> str:
    if "generation" in meta:
        return f"generation={meta['generation']}"
    return f"resourceVersion={meta.get('resourceVersion')}"


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences", []))


def controller_of(obj: Mapping[str, Any]) -> str | None:
    """The name of the SpecDecodingService controlling `obj`, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences", []):
        if ref.get("kind") == crd.KIND and ref.get("controller"):
            name = ref.get("name")
            return str(name) if name is not None else None
    return None


class Reconciler:
    def __init__(self, kube: Kube, config: builders.OperatorConfig,
                 clock: Callable[[], str] = utcnow) -> None:
        self.kube = kube
        self.config = config
        self.clock = clock
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._queued: dict[tuple[str, str], _Request] = {}
        # Each child as specd last applied it: its generation (kinds with a spec/status split,
        # whose status moves on its own) or else its resourceVersion.
        self._applied: dict[tuple[str, str, str], str] = {}

    def spec_drifted(self, child: dict[str, Any]) -> bool:
        """Whether `child` (from a watch event) differs from what specd last applied: someone
        else changed it. Unknown children (e.g. after a restart) count as drifted."""
        meta = child["metadata"]
        key = (child["kind"], meta["namespace"], meta["name"])
        return self._applied.get(key) != _version(meta)

    async def run(self, namespace: str, name: str, *, full: bool = True, note: str | None = None) -> None:
        """Reconcile one resource now, or fold this request into the pass already queued."""
        key = (namespace, name)
        queued = self._queued.get(key)  # no await between this look-up and the queueing below
        if queued is not None:
            queued.full = queued.full or full
            queued.notes += [note] if note else []
            return
        self._queued[key] = _Request(full, [note] if note else [])
        async with self._locks.setdefault(key, asyncio.Lock()):
            request = self._queued.pop(key)
            await self._pass(namespace, name, request)

    async def _pass(self, namespace: str, name: str, request: _Request) -> None:
        log.debug("%s pass of %s/%s", "full" if request.full else "status", namespace, name)
        body = await self.kube.get(crd.KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # gone or going: the garbage collector removes the children
        meta = body["metadata"]
        previous = body.get("status") or {}
        generation = meta.get("generation", 0)
        # A status pass on a spec the children do not reflect yet becomes a full pass.
        full = request.full or previous.get("observedGeneration") != generation
        spec = crd.apply_defaults(body["spec"])
        refused: KubeError | None = None
        if full:
            try:
                await self._apply(body)
            except KubeError as exc:
                if exc.retryable:
                    raise
                refused = exc  # e.g. an invalid toleration: reported in the status below
        roles = [role for role in (n.TARGET, n.DRAFT, n.ROUTER)
                 if role != n.DRAFT or pools.has_draft_pool(spec)]
        found = await asyncio.gather(*(self.kube.get("Deployment", namespace, n.child_name(name, role))
                                       for role in roles))
        new, transitions = status.compute_status(
            name=name, namespace=namespace, generation=generation, spec=spec,
            deployments=dict(zip(roles, found)), previous=previous, now=self.clock(),
            apply_error=str(refused) if refused else None)
        if status.status_changed(previous, new):
            await self.kube.patch_status(crd.KIND, namespace, name, new)
        for note in request.notes:
            await self.kube.post_event(body, "Normal", "ChildRestored", note)
        if full and not refused and previous.get("observedGeneration") != generation:
            await self.kube.post_event(body, "Normal", "Reconciled",
                                       f"children applied for generation {generation}")
        for t in transitions:
            await self.kube.post_event(body, "Warning" if t.warning else "Normal",
                                       f"{t.type}{t.status}", f"{t.reason}: {t.message}".rstrip(": "))
        if refused:
            raise refused  # Kopf retries later, with a delay

    async def _apply(self, body: dict[str, Any]) -> None:
        children = builders.build_children(body, self.config)
        for child in children:
            meta = (await self.kube.apply(child))["metadata"]
            self._applied[(child["kind"], meta["namespace"], meta["name"])] = _version(meta)
        await self._prune(body, {(c["kind"], c["metadata"]["name"]) for c in children})

    async def _prune(self, body: dict[str, Any], keep: set[tuple[str, str]]) -> None:
        """Delete the children this resource owns that its spec no longer asks for."""
        meta = body["metadata"]
        labels = n.instance_labels(meta["name"])
        listings = await asyncio.gather(*(self.kube.list(kind, meta["namespace"], labels)
                                          for kind in builders.CHILD_KINDS))
        for kind, objects in zip(builders.CHILD_KINDS, listings):
            for obj in objects:
                child = obj["metadata"]["name"]
                if (kind, child) not in keep and owned_by(obj, meta["uid"]):
                    log.info("pruning %s %s/%s", kind, meta["namespace"], child)
                    await self.kube.delete(kind, meta["namespace"], child)
                    await self.kube.post_event(body, "Normal", "Pruned",
                                               f"deleted {kind} {child}: no longer in the spec")


async def every_resource(kube: Kube, namespaces: list[str], interval: float, name: str,
                         action: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Every `interval` seconds, `action(resource)` for each resource in the watched namespaces
    (all namespaces when none), all at once; a failure is logged and leaves the others and the
    next round alone. Runs as a task on Kopf's loop (`handlers.build_registry`): the periodic
    full resync (watches can miss events while the operator is down or a watch expires: this
    bounds how long drift lasts) and the live figures (`live.LiveFigures.refresh`)."""
    scopes: list[str | None] = list(namespaces) or [None]
    while True:
        await asyncio.sleep(interval)
        listings = await asyncio.gather(*(kube.list(crd.KIND, scope) for scope in scopes),
                                        return_exceptions=True)
        items: list[dict[str, Any]] = []
        for scope, listing in zip(scopes, listings):
            if isinstance(listing, BaseException):
                _failed(f"{name} cannot list resources in {scope or 'all namespaces'}", listing)
            else:
                items += listing
        results = await asyncio.gather(*(action(item) for item in items), return_exceptions=True)
        for item, result in zip(items, results):
            if isinstance(result, BaseException):
                meta = item["metadata"]
                _failed(f"{name} of {meta['namespace']}/{meta['name']} failed", result)


def _failed(what: str, exc: BaseException) -> None:
    if isinstance(exc, KubeError):
        log.warning("%s: %s", what, exc)
    elif not isinstance(exc, asyncio.CancelledError):
        log.error("%s", what, exc_info=exc)


async def resync(reconciler: Reconciler, namespaces: list[str], interval: float) -> None:
    """A full pass of every resource every `interval` seconds."""
    async def full_pass(item: dict[str, Any]) -> None:
        await reconciler.run(item["metadata"]["namespace"], item["metadata"]["name"], full=True)

    await every_resource(reconciler.kube, namespaces, interval, "resync", full_pass)
