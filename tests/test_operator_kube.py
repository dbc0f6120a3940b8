"""The REST helper's pure parts: paths, retries, error decoding, watch stream framing."""

from __future__ import annotations

import json

import pytest

from specd.errors import SpecdError
from specd.operator import kube
from specd.operator.kube import KubeError, path, retrying, watch_events


def test_paths_of_namespaced_cluster_wide_and_subresources() -> None:
    assert path("Deployment", "ns", "a") == "/apis/apps/v1/namespaces/ns/deployments/a"
    assert path("ConfigMap", "ns") == "/api/v1/namespaces/ns/configmaps"
    assert path("SpecDecodingService", None) == "/apis/specd.io/v1alpha1/specdecodingservices"
    assert path("SpecDecodingService", "ns", "x", "status") == (
        "/apis/specd.io/v1alpha1/namespaces/ns/specdecodingservices/x/status")
    with pytest.raises(SpecdError, match="Pod"):
        path("Pod", "ns")


def test_transient_errors_are_retried_then_succeed() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KubeError(409 if len(calls) == 1 else 0, "Conflict", "try again")
        return "ok"

    assert retrying(flaky, delay=0.001) == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_permanent_errors_are_not_retried(status: int) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KubeError(status, "Nope", "no")

    with pytest.raises(KubeError):
        retrying(broken, delay=0.001)
    assert len(calls) == 1


def test_retries_are_bounded() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise KubeError(503, "ServiceUnavailable", "down")

    with pytest.raises(KubeError, match="503"):
        retrying(down, attempts=4, delay=0.001)
    assert len(calls) == 4


def test_status_bodies_become_readable_errors() -> None:
    body = json.dumps({"kind": "Status", "reason": "Invalid",
                       "message": "spec.target.replicas: Invalid value"}).encode()
    error = kube._error(422, body)
    assert (error.status, error.reason) == (422, "Invalid")
    assert "spec.target.replicas" in str(error) and not error.retryable
    assert kube._error(502, b"<html>bad gateway</html>").message == "<html>bad gateway</html>"


class _Chunks:
    """A response body delivered in arbitrary chunks (what urllib3's stream yields)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amt: int, decode_content: bool = True):
        yield from self.chunks


def test_watch_events_reassemble_lines_split_across_chunks() -> None:
    events = [{"type": "ADDED", "object": {"n": 1}}, {"type": "DELETED", "object": {"n": 2}}]
    text = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    chunks = [text[:7], text[7:30], text[30:31], text[31:]]
    assert list(watch_events(_Chunks(chunks))) == events
    assert list(watch_events(_Chunks([json.dumps(events[0]).encode()]))) == events[:1]
