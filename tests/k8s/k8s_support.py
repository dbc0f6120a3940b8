"""Helpers shared by the tests against a dev cluster (a unique module name: importable from
any test module of the suite once conftest.py put this folder on sys.path)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from specd.devcluster import realnode
from specd.devcluster.cluster import DevCluster
from specd.operator import names


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


# --- the real node: the chart's release, the demo namespace, and what its tests look at -----------

REPO = Path(__file__).resolve().parents[2]
RELEASE, OPERATOR_NS, NS = "specd", "specd-system", "demo-team"
CHECKPOINTS = REPO / "specd" / "demo" / "checkpoints"


def pods(cluster: DevCluster, role: str | None = None, instance: str = "demo") -> list[dict]:
    selector = f"{names.LABEL_INSTANCE}={instance}" + (f",{names.LABEL_COMPONENT}={role}" if role else "")
    return get(cluster, "pods", "-n", NS, "-l", selector)["items"]


def serving(cluster: DevCluster, role: str, count: int, instance: str = "demo") -> list[dict] | None:
    """`count` pods of the role, not terminating, on the real node, every container ready."""
    found = [p for p in pods(cluster, role, instance) if not p["metadata"].get("deletionTimestamp")]
    ok = len(found) == count and all(
        p["spec"].get("nodeName") == realnode.NODE_NAME
        and all(c.get("ready") and c.get("started") for c in p["status"].get("containerStatuses", [{}]))
        for p in found)
    return found if ok else None


def diagnose(cluster: DevCluster) -> str:
    out = [cluster.kubectl("get", "sds,deploy,pods", "-A", "-o", "wide", check=False).stdout,
           cluster.kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp", check=False).stdout[-3000:]]
    for pod in get(cluster, "pods", "-A")["items"]:
        meta = pod["metadata"]
        logs = cluster.kubectl("logs", "-n", meta["namespace"], meta["name"], "--tail=15", check=False)
        out.append(f"--- {meta['namespace']}/{meta['name']}\n{logs.stdout}{logs.stderr}")
    return "\n".join(out)


def plain_greedy(prompt: str, new_tokens: int) -> list[int]:
    """Local plain decoding (k = 0) of the demo target: the reference every answer must equal."""
    from specd.worker.engine import GenerationRequest, SpeculativeEngine
    from specd.worker.runner import ModelRunner
    from specd.worker.tokenizer import Tokenizer

    target = CHECKPOINTS / "target"
    engine = SpeculativeEngine(ModelRunner.from_dir(target))
    prompt_tokens = Tokenizer(target).encode(prompt)
    [(tokens, _)] = engine.generate([GenerationRequest(prompt_tokens, new_tokens, k=0, stop_at_eos=False)])
    return tokens


def router_address(cluster: DevCluster, instance: str = "demo") -> str:
    service = get(cluster, "service", f"{instance}-router", "-n", NS)
    return f"{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"


def cell(table: str, row: str, column: str) -> str:
    """One cell of `kubectl get` output: the row whose first cell is `row`, cut at the header's
    offsets (an empty cell is blanks, so splitting on whitespace would shift the others)."""
    header, *rows = table.splitlines()
    line = next(r for r in rows if r.split()[0] == row)
    start = f" {header} ".index(f" {column} ")
    after = header[start + len(column):]
    gap = len(after) - len(after.lstrip())
    return line[start:start + len(column) + gap if after.strip() else None].strip()
