"""The Kopf handlers: each one decides which reconciliation pass a Kubernetes event asks for.

- SpecDecodingService created, updated (spec, labels) or found at start-up -> full pass.
- A child created, edited or deleted by someone -> full pass of its owner (drift correction).
- A child Deployment whose status moved (pods became ready, ...) -> status pass of its owner;
  other status-only changes (PodDisruptionBudgets) are ignored.
The periodic resync (`reconcile.resync`) backs these up for anything a watch could have missed.

Kopf keeps its handler bookkeeping in annotations under specd.io (the status schema is
strict), and no finalizer is added: children are deleted by the garbage collector through their
owner references, so a resource can be deleted even while the operator is down.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from specd.operator import builders, crd
from specd.operator import names as n
from specd.operator.kube import Kube, KubeError
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


def _run(reconciler: Reconciler, namespace: str, name: str, *, full: bool,
         note: str | None = None) -> None:
    """Run a pass; API failures become Kopf retries with a delay (never a busy loop)."""
    try:
        reconciler.run(namespace, name, full=full, note=note)
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


def login(kube: Kube) -> kopf.ConnectionInfo:
    """Kopf's connection from the same credentials as specd's own client."""
    cfg = kube.api.configuration
    header = (cfg.get_api_key_with_prefix("BearerToken")
              or cfg.get_api_key_with_prefix("authorization") or "")
    scheme, _, token = header.partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        scheme=scheme or None, token=token or None,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file)


def on_service(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    _run(memo.reconciler, namespace, name, full=True)


def on_child_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    owner = controller_of(body)
    if owner is None or type is None:  # type None: the initial listing; resume covers it
        return
    meta, kind = body["metadata"], body["kind"]
    namespace = meta["namespace"]
    if type == "DELETED":
        _run(memo.reconciler, namespace, owner, full=True,
             note=f"{kind} {meta['name']} was deleted; recreated it")
    elif memo.reconciler.spec_drifted(body):
        _run(memo.reconciler, namespace, owner, full=True)  # edited by someone: re-assert
    elif kind == "Deployment":
        _run(memo.reconciler, namespace, owner, full=False)  # only its status moved


def build_registry(kube: Kube) -> kopf.OperatorRegistry:
    """A registry with every specd handler (no module-level decorators: tests stay isolated)."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(configure)

    def connection(**_: Any) -> kopf.ConnectionInfo:
        return login(kube)

    kopf.on.login(registry=registry)(connection)
    for reason, decorator in (("create", kopf.on.create), ("update", kopf.on.update),
                              ("resume", kopf.on.resume)):
        decorator(*SDS, id=reason, registry=registry, backoff=5)(on_service)
    for kind, resource in CHILD_RESOURCES.items():
        kopf.on.event(*resource, labels=CHILD_LABELS, registry=registry,
                      id=f"child-{kind}")(on_child_event)
    return registry
