"""A small REST client over the official kubernetes client's transport and authentication.

It speaks plain dicts (no generated models): server-side apply, get, list, delete, status
patch, events and watch streams, for the few kinds specd uses. Transient failures (conflicts,
throttling, server errors, dropped connections) are retried with a capped exponential backoff.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from specd.errors import SpecdError
from specd.operator import crd
from specd.operator.names import FIELD_MANAGER

log = logging.getLogger(__name__)
T = TypeVar("T")

# kind -> (API path prefix, plural) for every kind specd reads or writes.
RESOURCES: dict[str, tuple[str, str]] = {
    crd.KIND: (f"/apis/{crd.GROUP}/{crd.VERSION}", crd.PLURAL),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices"),
    "Event": ("/api/v1", "events"),
}
RETRYABLE = {409, 429, 500, 502, 503, 504}


class KubeError(SpecdError):
    """An API request that failed; `status` is the HTTP status (0: no response)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status in RETRYABLE


def path(kind: str, namespace: str | None, name: str | None = None,
         subresource: str | None = None) -> str:
    try:
        prefix, plural = RESOURCES[kind]
    except KeyError:
        raise SpecdError(f"specd's client does not know the kind {kind!r}") from None
    parts = [prefix] + (["namespaces", namespace] if namespace else []) + [plural]
    parts += [p for p in (name, subresource) if p]
    return "/".join(parts)


def retrying(fn: Callable[[], T], attempts: int = 5, delay: float = 0.2,
             max_delay: float = 3.0) -> T:
    """Call `fn` until it succeeds or fails for a reason a retry cannot fix."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except KubeError as exc:
            if not exc.retryable or attempt == attempts:
                raise
            log.debug("retrying after %s (attempt %d)", exc, attempt)
            time.sleep(min(delay * 2 ** (attempt - 1), max_delay))
    raise AssertionError("unreachable")


class Kube:
    def __init__(self, api_client: Any) -> None:
        self.api = api_client

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if kubeconfig or context:
                raise config.ConfigException("a kubeconfig was asked for")
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            try:
                config.load_kube_config(config_file=kubeconfig, context=context,
                                        client_configuration=configuration)
            except (config.ConfigException, OSError) as exc:
                raise SpecdError(f"cannot load Kubernetes credentials: {exc}") from exc
        return cls(client.ApiClient(configuration))

    # --- transport ----------------------------------------------------------------------------

    def _send(self, method: str, url_path: str, query: dict[str, Any] | None,
              body: Any, content_type: str | None, timeout: float | tuple[float, float]) -> Any:
        headers = {"Accept": "application/json",
                   "Content-Type": content_type or "application/json"}
        if query:
            url_path += "?" + urllib.parse.urlencode(
                {k: str(v).lower() if isinstance(v, bool) else v for k, v in query.items()})
        request = self.api.param_serialize(method, url_path, header_params=headers, body=body,
                                           auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*request, _request_timeout=timeout)
        except ApiException as exc:  # the client's own wrapping of TLS errors (status 0)
            raise KubeError(exc.status or 0, str(exc.reason), f"{method} {url_path}: "
                            f"{exc.body or exc.reason}") from exc
        except Exception as exc:  # urllib3 connection errors: no response at all
            if isinstance(exc, OSError) or type(exc).__module__.startswith("urllib3"):
                raise KubeError(0, "ConnectionError", f"{method} {url_path}: {exc}") from exc
            raise
        if not 200 <= response.status <= 299:
            response.read()
            raise _error(response.status, response.data)
        return response

    def request(self, method: str, url_path: str, *, query: dict[str, Any] | None = None,
                body: Any = None, content_type: str | None = None,
                timeout: float = 30) -> dict[str, Any]:
        response = self._send(method, url_path, query, body, content_type, timeout)
        response.read()
        return json.loads(response.data) if response.data else {}

    def stream(self, url_path: str, query: dict[str, Any], read_timeout: float) -> Any:
        """An open watch response (urllib3); iterate `watch_events` over it, `shutdown` it."""
        response = self._send("GET", url_path, {**query, "watch": True}, None, None,
                              (10, read_timeout))
        return response.response

    # --- verbs --------------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under specd's field manager, taking over conflicting fields."""
        meta = obj["metadata"]
        url = path(obj["kind"], meta.get("namespace"), meta["name"])
        return retrying(lambda: self.request(
            "PATCH", url, query={"fieldManager": FIELD_MANAGER, "force": True}, body=obj,
            content_type="application/apply-patch+yaml"))

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return retrying(lambda: self.request("GET", path(kind, namespace, name)))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return retrying(lambda: self.request("GET", path(kind, namespace), query=query))["items"]

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        try:
            retrying(lambda: self.request("DELETE", path(kind, namespace, name),
                                          query={"propagationPolicy": "Background"}))
        except KubeError as exc:
            if exc.status != 404:
                raise

    def patch_status(self, kind: str, namespace: str, name: str,
                     status: dict[str, Any]) -> dict[str, Any]:
        return retrying(lambda: self.request(
            "PATCH", path(kind, namespace, name, "status"), body={"status": status},
            content_type="application/merge-patch+json"))

    def post_event(self, involved: dict[str, Any], type_: str, reason: str,
                   message: str) -> None:
        """A core/v1 Event about `involved` (best effort: a lost event is only logged)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": os.environ.get("HOSTNAME") or socket.gethostname(),
        }
        try:
            retrying(lambda: self.request("POST", path("Event", meta["namespace"]), body=event))
        except KubeError as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)


def _error(status: int, data: bytes | None) -> KubeError:
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        body = {"message": (data or b"").decode(errors="replace")}
    return KubeError(status, body.get("reason", ""), body.get("message", ""))


def watch_events(response: Any) -> Any:
    """Yield the decoded events of a watch response, one JSON document per line."""
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
