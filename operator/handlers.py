"""The Kopf handlers: each one decides which reconciliation pass a Kubernetes event asks for.

- SpecDecodingService created, updated (spec, labels) or found at start-up -> full pass.
- A child created, edited or deleted by someone -> full pass of its owner (drift correction).
- A child Deployment whose status moved (pods became ready, ...) -> status pass of its owner;
  other status-only changes (PodDisruptionBudgets) are ignored.
The periodic resync (`reconcile.resync`) backs these up for anything a watch could have missed.

Kopf keeps its handler bookkeeping in annotations under specd.io (the status schema is
strict), and no finalizer is added: children are deleted by the garbage collector through their
owner references, so a resource can be deleted even while the operator is down.

That is why the periodic work (resync, live figures) is not a `kopf.timer`/`kopf.daemon` on the
resource: Kopf puts a finalizer on every resource a timer or daemon serves (it must see the
deletion to stop them, and has declined an opt-out), which would block deleting a resource, its
namespace or the CRD while the operator is down. Instead Kopf's startup handler starts each one
as a task on Kopf's own loop and its cleanup handler stops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import kopf

from specd.kube import Kube, KubeError, authorization
from specd.operator import builders, crd
from specd.operator import names as n
from specd.operator.reconcile import Reconciler, controller_of

SDS = (crd.GROUP, crd.VERSION, crd.PLURAL)
# (group, version, plural) of every child kind: the operator watches its own children.
CHILD_RESOURCES = {
    "ConfigMap": ("", "v1", "configmaps"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "Service": ("", "v1", "services"),
    "Deployment": ("apps", "v1", "deployments"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
}
assert set(CHILD_RESOURCES) == set(builders.CHILD_KINDS)
CHILD_LABELS = {n.LABEL_MANAGED_BY: n.MANAGED_BY}


async def _run(reconciler: Reconciler, namespace: str, name: str, *, full: bool,
               note: str | None = None) -> None:
    """Run a pass; API failures become Kopf retries with a delay (never a busy loop)."""
    try:
        await reconciler.run(namespace, name, full=full, note=note)
    except KubeError as exc:
        logging.getLogger(__name__).warning("reconciling %s/%s failed: %s", namespace, name, exc)
        raise kopf.TemporaryError(str(exc), delay=5 if exc.retryable else 30) from exc


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=crd.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # specd posts its own events for transitions
    # No watching of CRDs/namespaces (least privilege): the CRD must exist before the start.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300  # re-open watches regularly (watch expiry)
    settings.watching.reconnect_backoff = 1.0


async def login(kube: Kube) -> kopf.ConnectionInfo:
    """Kopf's connection from the same credentials as specd's own client (called again by Kopf
    on a 401: a rotated in-cluster token is read anew)."""
    config = kube.config
    cluster, user = config.cluster, config.user
    scheme, _, token = (await authorization(config)).partition(" ")

    def path(name: str | None) -> str | None:
        return str(config.abs_file(name)) if name else None

    return kopf.ConnectionInfo(
        server=cluster.server, ca_path=path(cluster.certificate_auth),
        ca_data=cluster.certificate_auth_data, insecure=cluster.insecure,
        scheme=scheme or None, token=token or None,
        certificate_path=path(user.client_cert) if user else None,
        certificate_data=user.client_cert_data if user else None,
        private_key_path=path(user.client_key) if user else None,
        private_key_data=user.client_key_data if user else None)


async def on_service(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    assert namespace is not None  # a namespaced kind
    await _run(memo.reconciler, namespace, name, full=True)


async def on_child_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    owner = controller_of(body)
    if owner is None or type is None:  # type None: the initial listing; resume covers it
        return
    meta, kind = body["metadata"], body["kind"]
    namespace = meta["namespace"]
    if type == "DELETED":
        await _run(memo.reconciler, namespace, owner, full=True,
                   note=f"{kind} {meta['name']} was deleted; recreated it")
    elif memo.reconciler.spec_drifted(body):
        await _run(memo.reconciler, namespace, owner, full=True)  # edited by someone: re-assert
    elif kind == "Deployment":
        await _run(memo.reconciler, namespace, owner, full=False)  # only its status moved


Periodic = Callable[[], Coroutine[Any, Any, None]]


def build_registry(kube: Kube, periodic: Sequence[Periodic] = ()) -> kopf.OperatorRegistry:
    """A registry with every specd handler (no module-level decorators: tests stay isolated);
    `periodic`: coroutine functions run as tasks for as long as the operator runs (resync, live
    figures: `reconcile.every_resource`)."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(configure)
    tasks: list[asyncio.Task[None]] = []

    async def start_periodic(**_: Any) -> None:
        tasks.extend(asyncio.create_task(job()) for job in periodic)

    async def stop_periodic(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await kube.aclose()

    kopf.on.startup(registry=registry, id="start-periodic")(start_periodic)
    kopf.on.cleanup(registry=registry, id="stop-periodic")(stop_periodic)

    async def connection(**_: Any) -> kopf.ConnectionInfo:
        return await login(kube)

    kopf.on.login(registry=registry)(connection)
    for reason, decorator in (("create", kopf.on.create), ("update", kopf.on.update),
                              ("resume", kopf.on.resume)):
        decorator(*SDS, id=reason, registry=registry, backoff=5)(on_service)
    for kind, resource in CHILD_RESOURCES.items():
        kopf.on.event(*resource, labels=CHILD_LABELS, registry=registry,
                      id=f"child-{kind}")(on_child_event)
    return registry
