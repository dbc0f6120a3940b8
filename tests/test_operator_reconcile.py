"""Reconciliation passes: serialisation (one running, one queued, later requests merged), and
which pass each child event asks for."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from specd.kube import KubeError
from specd.operator.builders import OperatorConfig
from specd.operator.reconcile import Reconciler, _Request, controller_of, every_resource, owned_by


class RecordingReconciler(Reconciler):
    """The real `run`; the pass itself records its request and can be held open."""

    def __init__(self) -> None:
        super().__init__(kube=None, config=OperatorConfig())  # type: ignore[arg-type]
        self.passes: list[tuple[str, str, _Request]] = []
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def _pass(self, namespace: str, name: str, request: _Request) -> None:
        self.passes.append((namespace, name, request))
        self.entered.set()
        await asyncio.wait_for(self.release.wait(), 10)


def test_requests_during_a_pass_merge_into_one_queued_pass() -> None:
    async def scenario() -> RecordingReconciler:
        r = RecordingReconciler()
        first = asyncio.create_task(r.run("ns", "a", full=False))
        await asyncio.wait_for(r.entered.wait(), 5)
        queued = asyncio.create_task(r.run("ns", "a", full=False, note="one"))
        await asyncio.sleep(0.2)  # `queued` now waits for the running pass
        started = time.monotonic()
        await r.run("ns", "a", full=True, note="two")  # merged: returns at once
        await r.run("ns", "a", full=False)
        assert time.monotonic() - started < 1
        r.release.set()
        await asyncio.wait_for(asyncio.gather(first, queued), 5)
        return r

    r = asyncio.run(scenario())
    assert [(p[1], p[2].full, p[2].notes) for p in r.passes] == [
        ("a", False, []), ("a", True, ["one", "two"])]


def test_different_resources_do_not_wait_for_each_other() -> None:
    async def scenario() -> None:
        r = RecordingReconciler()
        first = asyncio.create_task(r.run("ns", "a"))
        await asyncio.wait_for(r.entered.wait(), 5)
        second = asyncio.create_task(r.run("ns", "b"))
        await asyncio.sleep(0.3)
        assert [p[1] for p in r.passes] == ["a", "b"]  # b ran while a was still open
        r.release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)

    asyncio.run(scenario())


def test_spec_drift_compares_generation_or_resource_version_with_the_applied_one() -> None:
    r = RecordingReconciler()
    deployment: dict[str, Any] = {"kind": "Deployment", "metadata": {"namespace": "ns", "name": "a-target",
                                                     "generation": 3, "resourceVersion": "10"}}
    assert r.spec_drifted(deployment)  # never applied by this process: re-assert
    r._applied[("Deployment", "ns", "a-target")] = "generation=3"
    deployment["metadata"]["resourceVersion"] = "11"  # a status update
    assert not r.spec_drifted(deployment)
    deployment["metadata"]["generation"] = 4  # a spec change
    assert r.spec_drifted(deployment)
    config: dict[str, Any] = {"kind": "ConfigMap", "metadata": {"namespace": "ns", "name": "a-router-config",
                                                "resourceVersion": "12"}}
    r._applied[("ConfigMap", "ns", "a-router-config")] = "resourceVersion=12"
    assert not r.spec_drifted(config)
    config["metadata"]["resourceVersion"] = "13"
    assert r.spec_drifted(config)


def test_ownership_helpers() -> None:
    child = {"metadata": {"ownerReferences": [
        {"kind": "ReplicaSet", "name": "x", "uid": "1", "controller": False},
        {"kind": "SpecDecodingService", "name": "svc", "uid": "2", "controller": True}]}}
    assert controller_of(child) == "svc"
    assert owned_by(child, "2") and not owned_by(child, "3")
    assert controller_of({"metadata": {}}) is None


class RunRecorder(Reconciler):
    """The real drift detection; `run` records which pass a child event asked for."""

    def __init__(self) -> None:
        super().__init__(kube=None, config=OperatorConfig())  # type: ignore[arg-type]
        self.runs: list[tuple[str, str, bool, str | None]] = []

    async def run(self, namespace: str, name: str, *, full: bool = True,
                  note: str | None = None) -> None:
        self.runs.append((namespace, name, full, note))


def _child(kind: str, **meta: object) -> dict:
    return {"kind": kind, "metadata": {
        "namespace": "ns", "name": f"svc-{kind.lower()}", **meta,
        "ownerReferences": [{"kind": "SpecDecodingService", "name": "svc", "uid": "u",
                             "controller": True}]}}


def test_child_events_ask_for_the_right_pass() -> None:
    kopf = pytest.importorskip("kopf")
    from specd.operator.handlers import on_child_event

    r = RunRecorder()
    memo = kopf.Memo(reconciler=r)
    r._applied[("Deployment", "ns", "svc-deployment")] = "generation=2"
    r._applied[("PodDisruptionBudget", "ns", "svc-poddisruptionbudget")] = "generation=1"
    r._applied[("ConfigMap", "ns", "svc-configmap")] = "resourceVersion=7"

    def event(type_: str | None, body: dict) -> tuple | None:
        r.runs.clear()
        asyncio.run(on_child_event(type=type_, body=body, memo=memo))  # type: ignore[arg-type]
        return r.runs[0][2:] if r.runs else None

    assert event(None, _child("Deployment", generation=2)) is None  # initial listing
    assert event("MODIFIED", {"kind": "Deployment", "metadata": {
        "namespace": "ns", "name": "x", "generation": 1}}) is None  # not a specd child
    assert event("DELETED", _child("ConfigMap", resourceVersion="9")) == (
        True, "ConfigMap svc-configmap was deleted; recreated it")
    assert event("MODIFIED", _child("Deployment", generation=2)) == (False, None)  # status
    assert event("MODIFIED", _child("Deployment", generation=3)) == (True, None)  # edited
    assert event("MODIFIED", _child("PodDisruptionBudget", generation=1)) is None
    assert event("MODIFIED", _child("ConfigMap", resourceVersion="7")) is None  # ours
    assert event("MODIFIED", _child("ConfigMap", resourceVersion="8")) == (True, None)


class _Listing:
    """Answers Kube.list for the resources of two namespaces; the second fails once."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def list(self, kind: str, namespace: str | None) -> list[dict]:
        assert kind == "SpecDecodingService"
        self.calls.append(namespace)
        if namespace == "b" and self.calls.count("b") == 1:
            raise KubeError(503, "ServiceUnavailable", "down")
        return [{"metadata": {"namespace": namespace, "name": f"{namespace}{i}"}} for i in range(2)]


def test_every_resource_acts_on_each_resource_and_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    async def action(item: dict) -> None:
        seen.append(item["metadata"]["name"])
        if item["metadata"]["name"] == "a0":
            raise KubeError(409, "Conflict", "busy")

    async def scenario() -> None:
        task = asyncio.create_task(every_resource(_Listing(), ["a", "b"], 0.05, "test", action))  # type: ignore[arg-type]
        await asyncio.sleep(0.22)  # four rounds
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    rounds = [seen[i:i + 4] for i in range(2, len(seen), 4)]
    assert seen[:2] == ["a0", "a1"]  # round 1: b could not be listed
    assert rounds and all(sorted(r) == ["a0", "a1", "b0", "b1"] for r in rounds if len(r) == 4)
    assert "test cannot list resources in b" in caplog.text and "test of a/a0 failed" in caplog.text
