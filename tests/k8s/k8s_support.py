"""Helpers shared by the tests against a dev cluster (a unique module name: importable from
any test module of the suite once conftest.py put this folder on sys.path)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from specd.devcluster.cluster import DevCluster


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 90,
             diagnose: Callable[[], str] = lambda: "") -> Any:
    """check()'s first truthy result, polled every half second; fails the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{diagnose()}")
        time.sleep(0.5)


def get(cluster: DevCluster, *args: str) -> dict | None:
    """`kubectl get ARGS -o json`, None if kubectl failed (e.g. not found)."""
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def condition(body: dict, type_: str) -> dict:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == type_), {})
