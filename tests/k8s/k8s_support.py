"""Helpers shared by the tests against a dev cluster (a unique module name: importable from
any test module of the suite once conftest.py put this folder on sys.path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


class OperatorProcess:
    """`specd operator` in a subprocess on the dev cluster, logging to a file. `router_address`:
    where it polls every router's Stats (pods of kwok nodes run nothing: a local router, real or
    scripted); `namespaces`: those it watches (empty: all), read at each start."""

    def __init__(self, kubeconfig: Path, log: Path, router_address: str, *, namespaces: list[str] | None = None,
                 resync_seconds: float = 15, stats_seconds: float = 2) -> None:
        self.kubeconfig, self.log, self.router_address = kubeconfig, log, router_address
        self.namespaces = list(namespaces or [])
        self.resync_seconds, self.stats_seconds = resync_seconds, stats_seconds
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "specd.cli", "operator", "--kubeconfig", str(self.kubeconfig),
                 "--resync-seconds", str(self.resync_seconds), "--image", "specd:e2e",
                 "--stats-seconds", str(self.stats_seconds), "--router-address", self.router_address,
                 *[arg for ns in self.namespaces for arg in ("--namespace", ns)]],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[2])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-40:])


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
