"""specd.kube's own policy over lightkube: kinds, retries, error decoding, credentials."""

from __future__ import annotations

import asyncio
import json
import pathlib

import httpx2
import pytest
import yaml
from lightkube import ApiError

from specd import kube
from specd.errors import SpecdError
from specd.kube import KubeError, resource, retrying
from specd.operator import reconcile  # noqa: F401  (makes the custom kind known)


def _path(kind: str) -> tuple[str, str, str]:
    info = resource(kind)._api_info
    return info.resource.group, info.resource.version, info.plural


def test_kinds_map_to_their_api_groups_and_unknown_kinds_are_refused() -> None:
    assert _path("Deployment") == ("apps", "v1", "deployments")
    assert _path("ConfigMap") == ("", "v1", "configmaps")
    assert _path("EndpointSlice") == ("discovery.k8s.io", "v1", "endpointslices")
    assert _path("SpecDecodingService") == ("specd.io", "v1alpha1", "specdecodingservices")
    assert resource("SpecDecodingService").Status._api_info.action == "status"
    with pytest.raises(SpecdError, match="Pod"):
        resource("Pod")


def test_transient_errors_are_retried_then_succeed() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KubeError(409 if len(calls) == 1 else 0, "Conflict", "try again")
        return "ok"

    assert asyncio.run(retrying(delay=0.001)(flaky)) == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_permanent_errors_are_not_retried(status: int) -> None:
    calls = []

    async def broken() -> None:
        calls.append(1)
        raise KubeError(status, "Nope", "no")

    with pytest.raises(KubeError):
        asyncio.run(retrying(delay=0.001)(broken))
    assert len(calls) == 1


def test_retries_are_bounded() -> None:
    calls = []

    async def down() -> None:
        calls.append(1)
        raise KubeError(503, "ServiceUnavailable", "down")

    with pytest.raises(KubeError, match="503"):
        asyncio.run(retrying(attempts=4, delay=0.001)(down))
    assert len(calls) == 4


def _response(status: int, body: bytes, content_type: str) -> httpx2.Response:
    request = httpx2.Request("PATCH", "https://k8s/apis/apps/v1/namespaces/ns/deployments/a")
    return httpx2.Response(status, content=body, headers={"Content-Type": content_type}, request=request)


def test_status_bodies_become_readable_errors() -> None:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                       "reason": "Invalid", "message": "spec.target.replicas: Invalid value"}).encode()
    response = _response(422, body, "application/json")
    error = kube.kube_error(ApiError(request=response.request, response=response))
    assert (error.status, error.reason) == (422, "Invalid")
    assert "spec.target.replicas" in str(error) and not error.retryable
    page = _response(502, b"<html>bad gateway</html>", "text/html")
    error = kube.kube_error(httpx2.HTTPStatusError("bad", request=page.request, response=page))
    assert error.message == "<html>bad gateway</html>" and error.retryable
    dropped = kube.kube_error(httpx2.ConnectError("connection refused"))
    assert dropped.status == 0 and dropped.retryable


def _kubeconfig(path: pathlib.Path, user: dict) -> pathlib.Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}},
                     {"name": "b", "context": {"cluster": "c", "user": "u", "namespace": "x"}}]}))
    return path


def test_kubeconfig_context_and_authorization(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = _kubeconfig(tmp_path / "config", {"token": "secret"})
    monkeypatch.setenv("KUBECONFIG", f"{path}{':'}{tmp_path / 'other'}")
    config = kube.load_config()  # no pod here: the first file of $KUBECONFIG
    assert config.cluster.server == "https://10.0.0.1:6443" and config.context_name == "a"
    assert kube.load_config(str(path), "b").namespace == "x"
    assert asyncio.run(kube.authorization(config)) == "Bearer secret"
    basic = kube.load_config(str(_kubeconfig(tmp_path / "basic", {"username": "u", "password": "p"})))
    assert asyncio.run(kube.authorization(basic)).startswith("Basic ")
    with pytest.raises(SpecdError, match="cannot load Kubernetes credentials"):
        kube.load_config(str(path), "nope")
