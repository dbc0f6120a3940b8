"""One reconciliation pass of a SpecDecodingService, and the per-resource serialisation of passes.

A full pass applies every child (server-side apply: creates what is missing, restores edited
fields, rolls Deployments whose template changed), deletes children the spec no longer wants,
then observes the Deployments and writes the status. A status pass only observes and writes.

Many triggers (the resource's own events, its children's events, the periodic resync) can ask
for a pass of the same resource at once: `Reconciler.run` keeps at most one pass running and one
queued per resource, merging further requests into the queued one, which reads the latest state
when it starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
from collections.abc import Callable
from typing import Any

from specd.operator import builders, crd, status
from specd.operator import names as n
from specd.operator.kube import Kube, KubeError

log = logging.getLogger(__name__)


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


def controller_of(obj: dict[str, Any]) -> str | None:
    """The name of the SpecDecodingService controlling `obj`, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences", []):
        if ref.get("kind") == crd.KIND and ref.get("controller"):
            return ref.get("name")
    return None


class Reconciler:
    def __init__(self, kube: Kube, config: builders.OperatorConfig,
                 clock: Callable[[], str] = utcnow) -> None:
        self.kube = kube
        self.config = config
        self.clock = clock
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
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

    def run(self, namespace: str, name: str, *, full: bool = True, note: str | None = None) -> None:
        """Reconcile one resource now, or fold this request into the pass already queued."""
        key = (namespace, name)
        with self._guard:
            queued = self._queued.get(key)
            if queued is not None:
                queued.full = queued.full or full
                queued.notes += [note] if note else []
                return
            self._queued[key] = _Request(full, [note] if note else [])
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                request = self._queued.pop(key)
            self._pass(namespace, name, request)

    def _pass(self, namespace: str, name: str, request: _Request) -> None:
        log.debug("%s pass of %s/%s", "full" if request.full else "status", namespace, name)
        body = self.kube.get(crd.KIND, namespace, name)
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
                self._apply(body)
            except KubeError as exc:
                if exc.retryable:
                    raise
                refused = exc  # e.g. an invalid toleration: reported in the status below
        deployments = {role: self.kube.get("Deployment", namespace, n.child_name(name, role))
                       for role in (n.TARGET, n.DRAFT, n.ROUTER)
                       if role != n.DRAFT or builders.has_draft_pool(spec)}
        new, transitions = status.compute_status(
            name=name, namespace=namespace, generation=generation, spec=spec,
            deployments=deployments, previous=previous, now=self.clock(),
            apply_error=str(refused) if refused else None)
        if status.status_changed(previous, new):
            self.kube.patch_status(crd.KIND, namespace, name, new)
        for note in request.notes:
            self.kube.post_event(body, "Normal", "ChildRestored", note)
        if full and not refused and previous.get("observedGeneration") != generation:
            self.kube.post_event(body, "Normal", "Reconciled",
                                 f"children applied for generation {generation}")
        for t in transitions:
            self.kube.post_event(body, "Warning" if t.warning else "Normal",
                                 f"{t.type}{t.status}", f"{t.reason}: {t.message}".rstrip(": "))
        if refused:
            raise refused  # Kopf retries later, with a delay

    def _apply(self, body: dict[str, Any]) -> None:
        children = builders.build_children(body, self.config)
        for child in children:
            meta = self.kube.apply(child)["metadata"]
            self._applied[(child["kind"], meta["namespace"], meta["name"])] = _version(meta)
        self._prune(body, {(c["kind"], c["metadata"]["name"]) for c in children})

    def _prune(self, body: dict[str, Any], keep: set[tuple[str, str]]) -> None:
        """Delete the children this resource owns that its spec no longer asks for."""
        meta = body["metadata"]
        selector = n.selector_string(n.instance_labels(meta["name"]))
        for kind in builders.CHILD_KINDS:
            for obj in self.kube.list(kind, meta["namespace"], selector):
                child = obj["metadata"]["name"]
                if (kind, child) not in keep and owned_by(obj, meta["uid"]):
                    log.info("pruning %s %s/%s", kind, meta["namespace"], child)
                    self.kube.delete(kind, meta["namespace"], child)
                    self.kube.post_event(body, "Normal", "Pruned",
                                         f"deleted {kind} {child}: no longer in the spec")


class EveryResource:
    """Every `interval` seconds, `action(resource)` for each resource in the watched namespaces,
    on a daemon thread. Used for the periodic full resync (watches can miss events while the
    operator is down or a watch expires: this bounds how long drift lasts) and for the live
    figures (`live.LiveFigures`)."""

    def __init__(self, kube: Kube, namespaces: list[str], interval: float, name: str,
                 action: Callable[[dict[str, Any]], None]) -> None:
        self.kube = kube
        self.namespaces: list[str | None] = list(namespaces) or [None]  # None: all namespaces
        self.interval = interval
        self.name = name
        self.action = action
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"specd-{name}", daemon=True)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            for namespace in self.namespaces:
                try:
                    items = self.kube.list(crd.KIND, namespace)
                except KubeError as exc:
                    log.warning("%s cannot list resources: %s", self.name, exc)
                    continue
                for item in items:
                    meta = item["metadata"]
                    try:
                        self.action(item)
                    except KubeError as exc:
                        log.warning("%s of %s/%s failed: %s", self.name, meta["namespace"], meta["name"], exc)


def resync(reconciler: Reconciler, namespaces: list[str], interval: float) -> EveryResource:
    """A full pass of every resource every `interval` seconds."""
    return EveryResource(reconciler.kube, namespaces, interval, "resync", lambda item: reconciler.run(
        item["metadata"]["namespace"], item["metadata"]["name"], full=True))
