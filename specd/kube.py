"""specd's Kubernetes client, shared by the operator and the router: lightkube's async client.

Why lightkube (over kubernetes_asyncio or kr8s): one generic interface for every kind, built-in or
custom (`get`/`list`/`patch`/`delete` take the resource class, server-side apply is a patch type
with a field manager and `force`), list-then-watch from the list's resourceVersion with the watch
stream parsed and re-opened by the library, in-cluster credentials whose rotated token file is
re-read on a 401 as client-go does, and type hints throughout. kubernetes_asyncio speaks generated
per-kind methods and models (a dict-generic client there means its discovery-based dynamic
client); kr8s is pre-1.0 and pulls in more.

What stays here is specd's own policy over it: which kinds specd uses, dicts in and out,
`KubeError` (retryable or not) for every failure, and transient failures (conflicts, throttling,
server errors, dropped connections) retried with a capped exponential backoff by tenacity.
Credentials: in-cluster when running in a pod, else the kubeconfig ($KUBECONFIG, first file, or
~/.kube/config), as kubectl does; a kubeconfig or context asked for by name always wins.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx2
import tenacity
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig, SingleConfig
from lightkube.config.client_adapter import user_auth
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Event, Service, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from lightkube.types import CascadeType, PatchType

from specd.errors import SpecdError

log = logging.getLogger(__name__)
if logging.getLogger("httpx2").level == logging.NOTSET:
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # it logs every request at INFO
T = TypeVar("T")
Labels = Mapping[str, Any]  # label -> a value it equals, or an iterable of values it is one of

# Every kind specd reads or writes; custom kinds join through `custom_kind`.
KINDS: dict[str, type[Any]] = {
    "Deployment": Deployment, "Service": Service, "ConfigMap": ConfigMap,
    "ServiceAccount": ServiceAccount, "Role": Role, "RoleBinding": RoleBinding,
    "PodDisruptionBudget": PodDisruptionBudget, "EndpointSlice": EndpointSlice, "Event": Event,
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


def custom_kind(group: str, version: str, kind: str, plural: str) -> type[Any]:
    """Make a namespaced custom kind known (idempotent); its objects are plain dicts."""
    KINDS[kind] = create_namespaced_resource(group, version, kind, plural)
    return KINDS[kind]


def resource(kind: str) -> type[Any]:
    try:
        return KINDS[kind]
    except KeyError:
        raise SpecdError(f"specd's client does not know the kind {kind!r}") from None


def kube_error(exc: Exception) -> KubeError:
    """The KubeError of a failed request: the API's Status when it sent one."""
    if isinstance(exc, ApiError):
        status = exc.status
        return KubeError(status.code or 0, status.reason or "", status.message or "")
    if isinstance(exc, httpx2.HTTPStatusError):  # a body that is no Status (a proxy's error page)
        return KubeError(exc.response.status_code, exc.response.reason_phrase, exc.response.text)
    return KubeError(0, "ConnectionError", f"{type(exc).__name__}: {exc}")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, KubeError) and exc.retryable


def retrying(attempts: int = 5, delay: float = 0.2, max_delay: float = 3.0) -> tenacity.AsyncRetrying:
    """`await retrying()(fn, *args)`: call `fn` until it succeeds or fails for a reason a retry
    cannot fix (waits delay, 2*delay, ... capped at max_delay)."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=delay, max=max_delay),
        retry=tenacity.retry_if_exception(_transient), reraise=True,
        before_sleep=tenacity.before_sleep_log(log, logging.DEBUG))


async def _once(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except (httpx2.HTTPError, OSError) as exc:
        raise kube_error(exc) from exc


def load_config(kubeconfig: str | None = None, context: str | None = None) -> SingleConfig:
    """In-cluster credentials when running in a pod, else the kubeconfig."""
    config: SingleConfig | None = None
    if not (kubeconfig or context):
        with contextlib.suppress(ConfigError, KeyError):  # no token file or KUBERNETES_SERVICE_HOST
            config = KubeConfig.from_service_account().get()
    path = kubeconfig or (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)[0]
    try:
        config = config or KubeConfig.from_file(path).get(context_name=context)
    except (ConfigError, OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecdError(f"cannot load Kubernetes credentials: {exc}") from exc
    assert config is not None  # get() raises where no context is named
    return config


async def authorization(config: SingleConfig) -> str:
    """The Authorization header lightkube would send (a token, a rotated token file re-read, an
    exec plugin's token, basic auth), e.g. for another client such as Kopf's; "" without one."""
    auth = user_auth(config.user)
    if auth is None:
        return ""
    request = httpx2.Request("GET", config.cluster.server)
    flow = auth.async_auth_flow(request)
    try:
        await flow.__anext__()  # the request, its header set
    finally:
        await flow.aclose()
    return request.headers.get("Authorization", "")


class Kube:
    """specd's verbs on dicts over one lightkube AsyncClient (bound to the event loop that first
    uses it). `manager`: the field manager of server-side apply and the source of events."""

    def __init__(self, client: AsyncClient, manager: str = "specd") -> None:
        self.client = client
        self.manager = manager

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                manager: str = "specd") -> Kube:
        return cls(AsyncClient(load_config(kubeconfig, context), lazy=False), manager)

    @property
    def config(self) -> SingleConfig:
        return self.client.config

    async def aclose(self) -> None:
        await self.client.close()

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        return await retrying()(_once, call)

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under the field manager, taking over conflicting fields."""
        meta = obj["metadata"]
        applied = await self._call(lambda: self.client.patch(
            resource(obj["kind"]), meta["name"], obj, namespace=meta.get("namespace"),
            patch_type=PatchType.APPLY, field_manager=self.manager, force=True))
        return _dict(applied)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found = await self._call(lambda: self.client.get(resource(kind), name, namespace=namespace))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return _dict(found)

    async def list_at(self, kind: str, namespace: str | None,
                      labels: Labels | None = None) -> tuple[list[dict[str, Any]], str]:
        """The objects (namespace None: in all namespaces) and the list's resourceVersion."""
        async def once() -> tuple[list[dict[str, Any]], str]:
            listing = self.client.list(resource(kind), namespace=namespace or "*", labels=dict(labels or {}))
            items = [_dict(item) async for item in listing]
            return items, listing.resourceVersion

        return await self._call(once)

    async def list(self, kind: str, namespace: str | None,
                   labels: Labels | None = None) -> list[dict[str, Any]]:
        return (await self.list_at(kind, namespace, labels))[0]

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        try:
            await self._call(lambda: self.client.delete(resource(kind), name, namespace=namespace,
                                                        cascade=CascadeType.BACKGROUND))
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def patch_status(self, kind: str, namespace: str, name: str,
                           status: dict[str, Any]) -> dict[str, Any]:
        patched = await self._call(lambda: self.client.patch(
            resource(kind).Status, name, {"status": status}, namespace=namespace,
            patch_type=PatchType.MERGE))
        return _dict(patched)

    async def post_event(self, involved: dict[str, Any], type_: str, reason: str,
                         message: str) -> None:
        """A core/v1 Event about `involved` (best effort: a lost event is only logged)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = Event.from_dict({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": self.manager},
            "reportingComponent": self.manager,
            "reportingInstance": os.environ.get("HOSTNAME") or socket.gethostname(),
        })
        try:
            await self._call(lambda: self.client.create(event))
        except KubeError as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)

    async def watch(self, kind: str, namespace: str | None, labels: Labels | None,
                    resource_version: str, server_timeout: int) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """(type, object) of every change after `resource_version`; the library re-opens the watch
        each time the server ends it (`server_timeout`) and resumes from the last event. Errors
        are KubeErrors (410: the version expired, relist)."""
        events = self.client.watch(resource(kind), namespace=namespace or "*", labels=dict(labels or {}),
                                   server_timeout=server_timeout, resource_version=resource_version)
        try:
            async for type_, obj in events:
                yield type_, _dict(obj)
        except (httpx2.HTTPError, OSError) as exc:
            raise kube_error(exc) from exc


def _dict(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict())  # lightkube's models and generic resources alike
