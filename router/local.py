"""Local mode: workers and a router as child processes on loopback (`specd up`, the benchmark, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specd import contract
from specd.errors import SpecdError
from specd.ports import LOOPBACK, free_port

HOST = LOOPBACK  # where free_port checks its ports


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


@dataclass
class LocalStack:
    workers: list[Process] = field(default_factory=list)
    routers: list[Process] = field(default_factory=list)

    def addresses(self, role: str) -> list[str]:
        return [w.address for w in self.workers if w.name.startswith(role) and w.alive()]

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
