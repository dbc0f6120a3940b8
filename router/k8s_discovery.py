"""Worker discovery in a cluster: watch the EndpointSlices of the worker Services.

`EndpointSliceWatcher` keeps, per role, the sorted "ip:port" list of the ready endpoints of that
role's (headless) Service, and tells subscribers whenever it changes, so scaling a pool needs no
router restart. A background thread lists once, then watches from the list's resourceVersion;
an expired watch (410 Gone) relists, a dropped connection re-watches after a short backoff.

Protocol (what the router consumes):
  current() -> dict[role, list["ip:port"]]     every role of `service_names`, maybe empty
  subscribe(callback)                           callback(current) after each change, called
                                                from the watch thread; not called on subscribe
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from specd.errors import SpecdError
from specd.operator.kube import Kube, KubeError, path, watch_events

log = logging.getLogger(__name__)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
Endpoints = dict[str, list[str]]


def ready_addresses(slice_: dict[str, Any], port: int) -> list[str]:
    """ "ip:port" of the ready endpoints of one EndpointSlice (ready unset counts as ready)."""
    ipv6 = slice_.get("addressType") == "IPv6"
    out = []
    for endpoint in slice_.get("endpoints") or []:
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        for address in endpoint.get("addresses", []):
            out.append(f"[{address}]:{port}" if ipv6 else f"{address}:{port}")
    return out


class EndpointSliceWatcher:
    def __init__(self, namespace: str, service_names: dict[str, str], ports: dict[str, int],
                 kube: Kube | None = None, watch_timeout_s: int = 300,
                 retry_delay_s: float = 1.0) -> None:
        if set(service_names) != set(ports):
            raise SpecdError(f"discovery: roles of services {sorted(service_names)} and ports "
                             f"{sorted(ports)} differ")
        self.namespace = namespace
        self.roles = {service: role for role, service in service_names.items()}
        self.ports = dict(ports)
        self.kube = kube
        self.watch_timeout_s = watch_timeout_s
        self.retry_delay_s = retry_delay_s
        self._lock = threading.Lock()
        self._slices: dict[str, tuple[str, list[str]]] = {}  # slice name -> (role, addresses)
        self._current: Endpoints = {role: [] for role in service_names}
        self._callbacks: list[Callable[[Endpoints], None]] = []
        self._stopped = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._selector = (f"{SERVICE_NAME_LABEL} in "
                          f"({','.join(sorted(service_names.values()))})")

    # --- protocol -----------------------------------------------------------------------------

    def current(self) -> Endpoints:
        with self._lock:
            return {role: list(addresses) for role, addresses in self._current.items()}

    def subscribe(self, callback: Callable[[Endpoints], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def start(self) -> None:
        """List the slices (so `current()` is right on return), then watch in the background."""
        if self.kube is None:
            self.kube = Kube.connect()
        resource_version = self._relist()
        self._thread = threading.Thread(target=self._watch_loop, args=(resource_version,),
                                        name="specd-endpointslices", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        response = self._response
        if response is not None:  # unblock the watch thread's read
            getattr(response, "shutdown", response.close)()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- internals ----------------------------------------------------------------------------

    def _url(self) -> str:
        return path("EndpointSlice", self.namespace)

    def _relist(self) -> str:
        assert self.kube is not None
        listing = self.kube.request("GET", self._url(), query={"labelSelector": self._selector})
        with self._lock:
            self._slices = {}
            for item in listing.get("items", []):
                self._store(item)
        self._publish()
        return listing["metadata"]["resourceVersion"]

    def _store(self, slice_: dict[str, Any]) -> None:
        meta = slice_["metadata"]
        role = self.roles.get(meta.get("labels", {}).get(SERVICE_NAME_LABEL, ""))
        if role is not None:
            self._slices[meta["name"]] = (role, ready_addresses(slice_, self.ports[role]))

    def _publish(self) -> None:
        with self._lock:
            endpoints: Endpoints = {role: [] for role in self._current}
            for role, addresses in self._slices.values():
                endpoints[role].extend(addresses)
            endpoints = {role: sorted(set(a)) for role, a in endpoints.items()}
            if endpoints == self._current:
                return
            self._current = endpoints
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback({role: list(a) for role, a in endpoints.items()})
            except Exception:  # a subscriber's bug must not stop discovery
                log.exception("endpoint subscriber failed")

    def _watch_loop(self, resource_version: str | None) -> None:
        while not self._stopped.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch_once(resource_version)
            except KubeError as exc:
                if exc.status == 410:
                    resource_version = None
                    continue
                log.warning("EndpointSlice watch failed, retrying: %s", exc)
                self._stopped.wait(self.retry_delay_s)
            except Exception as exc:  # connection dropped mid-stream
                if self._stopped.is_set():
                    return
                log.warning("EndpointSlice watch interrupted, retrying: %s", exc)
                self._stopped.wait(self.retry_delay_s)

    def _watch_once(self, resource_version: str) -> str | None:
        """Follow one watch until the server ends it; the resourceVersion to resume from."""
        assert self.kube is not None
        self._response = self.kube.stream(
            self._url(), {"labelSelector": self._selector, "resourceVersion": resource_version,
                          "allowWatchBookmarks": True, "timeoutSeconds": self.watch_timeout_s},
            read_timeout=self.watch_timeout_s + 30)
        try:
            for event in watch_events(self._response):
                kind, obj = event.get("type"), event.get("object", {})
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None  # expired: relist
                    raise KubeError(obj.get("code", 0), obj.get("reason", ""),
                                    obj.get("message", ""))
                resource_version = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                with self._lock:
                    if kind == "DELETED":
                        self._slices.pop(obj["metadata"]["name"], None)
                    else:
                        self._store(obj)
                self._publish()
        finally:
            self._response.release_conn()
            self._response = None
        return resource_version
