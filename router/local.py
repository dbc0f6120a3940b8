"""Local mode: workers and routers as child processes on loopback.

`LocalStack.launch` is the one launcher of a local stack (`specd up`, `specd demo`, `specd bench
serve`): start the workers, wait until each serves, start the routers over them and wait again.
Tests and `specd bench calibrate` use its parts (`start_worker`, `start_router`, `wait_serving`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specd import contract
from specd.errors import SpecdError
from specd.ports import LOOPBACK, free_port

HOST = LOOPBACK  # where free_port checks its ports
WORKER_START_S = 300.0  # seconds a worker may take to serve (loading its model)
ROUTER_START_S = 120.0


def _specd(*args: str) -> list[str]:
    return [sys.executable, "-m", "specd.cli", *args]


@dataclass
class Process:
    name: str
    address: str  # HOST:PORT of its gRPC service
    popen: subprocess.Popen
    metrics: str = ""  # HOST:PORT of its Prometheus /metrics ("": none)
    http: str = ""  # HOST:PORT of a router's OpenAI-compatible HTTP ("": none)

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass(frozen=True)
class RouterSettings:
    """One router of a local stack."""
    policy: str
    speculation: str
    max_batch_size: int
    port: int = 0  # 0: any free port


@dataclass
class LocalStack:
    workers: list[Process] = field(default_factory=list)
    routers: list[Process] = field(default_factory=list)

    def addresses(self, role: str) -> list[str]:
        return [w.address for w in self.workers if w.name.startswith(role) and w.alive()]

    def launch(self, target_model: str | Path, draft_model: str | Path, routers: Sequence[RouterSettings], *,
               targets: int = 1, drafts: int = 1, threads: int = 1,
               draft_method: str = contract.DEFAULT_DRAFT_METHOD, log_dir: Path | None = None,
               on_worker_serving: Callable[[Process], None] | None = None) -> list[Process]:
        """Start `targets` target and `drafts` draft workers (no draft workers when `draft_method`
        drafts inside the target), wait until each serves (then call `on_worker_serving`), start one
        router per `routers` entry over them and wait until each serves. Returns those routers, in
        order. Logs go to `log_dir` (made if missing), else the workers' stderr is this process's."""
        if log_dir:
            log_dir.mkdir(parents=True, exist_ok=True)
        if draft_method not in contract.DRAFT_POOL_METHODS:
            drafts = 0
        for _ in range(targets):
            self.start_worker("target", target_model, threads, log_dir, draft_method=draft_method)
        for _ in range(drafts):
            self.start_worker("draft", draft_model, threads, log_dir)
        for worker in self.workers:
            self.wait_serving(worker, WORKER_START_S)
            if on_worker_serving:
                on_worker_serving(worker)
        started = [self.start_router(r.policy, r.speculation, r.max_batch_size, r.port, log_dir) for r in routers]
        for router in started:
            self.wait_serving(router, ROUTER_START_S)
        return started

    def start_worker(self, role: str, model_dir: str | Path, threads: int = 1, log_dir: Path | None = None,
                     tensor_parallel_size: int = 1, draft_method: str = contract.DEFAULT_DRAFT_METHOD) -> Process:
        port, metrics = free_port(), free_port()
        name = f"{role}-{sum(w.name.startswith(role) for w in self.workers)}"
        popen = _spawn(_specd("worker", "--role", role, "--model", str(model_dir), "--host", HOST,
                              "--port", str(port), "--threads", str(threads),
                              "--tensor-parallel-size", str(tensor_parallel_size),
                              "--draft-method", draft_method, "--metrics-port", str(metrics)), name, log_dir)
        process = Process(name, f"{HOST}:{port}", popen, f"{HOST}:{metrics}")
        self.workers.append(process)
        return process

    def start_router(self, policy: str, speculation: str, max_batch_size: int, port: int = 0,
                     log_dir: Path | None = None) -> Process:
        """A router over every live worker of the stack."""
        port, metrics, http = port or free_port(), free_port(), free_port()
        args = ["router", "--host", HOST, "--port", str(port), "--policy", policy, "--speculation", speculation,
                "--max-batch-size", str(max_batch_size), "--metrics-port", str(metrics), "--http-port", str(http)]
        for role in ("target", "draft"):
            for address in self.addresses(role):
                args += [f"--{role}", address]
        name = f"router-{len(self.routers)}-{policy}-{speculation.replace(':', '')}"
        router = Process(name, f"{HOST}:{port}", _spawn(_specd(*args), name, log_dir), f"{HOST}:{metrics}",
                         f"{HOST}:{http}")
        self.routers.append(router)
        return router

    def wait_serving(self, process: Process, timeout_s: float) -> None:
        """Block until `process` answers grpc.health.v1 with SERVING."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(process.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if not process.alive():
                    raise SpecdError(f"{process.name} exited with status {process.popen.returncode}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise SpecdError(f"{process.name} at {process.address} did not start within {timeout_s:.0f}s")
                time.sleep(0.2)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the routers first (they drain), then the workers; SIGKILL what outlives the grace."""
        _terminate(self.routers, grace_s)
        self.routers.clear()
        _terminate(self.workers, grace_s)
        self.workers.clear()


def _spawn(command: list[str], name: str, log_dir: Path | None) -> subprocess.Popen:
    output = open(log_dir / f"{name}.log", "ab") if log_dir else subprocess.DEVNULL
    # own process group: a terminal's Ctrl-C reaches `specd up`, which then stops children in order
    return subprocess.Popen(command, stdout=output, stderr=output if log_dir else None, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _terminate(processes: list[Process], grace_s: float) -> None:
    for process in processes:
        if process.alive():
            process.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.popen.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()
