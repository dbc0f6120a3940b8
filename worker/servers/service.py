"""gRPC servicers of the draft and target workers, and `serve_worker` that runs one of them.

Model calls run right on the event loop thread, one at a time (the runner is not thread-safe,
and a worker has one model to run anyway). Handing them to a thread instead cost milliseconds
per call in GIL hand-offs between the torch thread and the gRPC loop (measured on the demo
target: 12.7 ms step + 3.6 ms overhead through a thread, 7.3 ms + 1.1 ms inline). Health
checks and releases wait for at most the step under way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from specd import contract
from specd.errors import SpecdError
from specd.metrics_server import MetricsServer
from specd.proto import server as grpc_server
from specd.proto.v1 import worker_pb2, worker_pb2_grpc
from specd.worker.kv_cache import KVBudgetExceeded
from specd.worker.runner import ContextTooLong
from specd.worker.servers.core import StaleRequest, WorkerCore

log = logging.getLogger(__name__)
T = TypeVar("T")
ROLES = ("draft", "target")
SERVICE_NAMES = {"draft": "specd.v1.DraftWorker", "target": "specd.v1.TargetWorker"}
# After SIGTERM a worker keeps answering until the router has stopped calling it for this long. In
# a cluster the pod's deletion reaches the kubelet (SIGTERM) and the router (its endpoint leaves
# the EndpointSlice) at about the same time: a worker that refused calls at once would fail the
# router's next iteration on it, instead of letting the router move its requests at an iteration
# boundary. A router that never stops calling (fixed addresses) is cut off at the grace period.
DRAIN_QUIET_S = 1.0

_STATUS = [  # most specific first
    (StaleRequest, grpc.StatusCode.FAILED_PRECONDITION),
    (KVBudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ContextTooLong, grpc.StatusCode.OUT_OF_RANGE),
    (SpecdError, grpc.StatusCode.INVALID_ARGUMENT),
]


class _Base:
    def __init__(self, core: WorkerCore) -> None:
        self.core = core

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except SpecdError as exc:
            code = next(code for kind, code in _STATUS if isinstance(exc, kind))
            await context.abort(code, str(exc))
            raise  # not reached: abort raises

    async def Info(self, request, context):
        return self.core.info()

    async def Prefill(self, request, context):
        return worker_pb2.PrefillResponse(cost=await self._run(context, lambda: self.core.prefill(list(request.items))))

    async def Release(self, request, context):
        released = await self._run(context, lambda: self.core.release(list(request.request_ids)))
        return worker_pb2.ReleaseResponse(released=released)

    async def Stats(self, request, context):
        return await self._run(context, self.core.stats)


class DraftServicer(_Base, worker_pb2_grpc.DraftWorkerServicer):
    async def Propose(self, request, context):
        proposals, cost = await self._run(context, lambda: self.core.propose(list(request.items)))
        return worker_pb2.ProposeResponse(proposals=proposals, cost=cost)


class TargetServicer(_Base, worker_pb2_grpc.TargetWorkerServicer):
    async def Verify(self, request, context):
        verdicts, cost = await self._run(context, lambda: self.core.verify(list(request.items)))
        return worker_pb2.VerifyResponse(verdicts=verdicts, cost=cost)


def load_core(role: str, model_dir: str, tensor_parallel_size: int = 1, kv_budget_mib: float = 512,
              draft_method: str = "none", device: str = contract.DEFAULT_DEVICE,
              dtype: str = contract.DEFAULT_DTYPE) -> WorkerCore:
    """draft_method: the service's; a target worker runs the methods that draft inside it.
    device, dtype: the worker's placement (worker/device.py; `auto`: a GPU with bfloat16 if any)."""
    from specd.worker.device import resolve_placement
    from specd.worker.methods import check_method, needs_adapter
    from specd.worker.tensor_parallel import load_runner

    if role not in ROLES:
        raise SpecdError(f"unknown worker role {role!r} (choose from {', '.join(ROLES)})")
    if role == "draft" and tensor_parallel_size != 1:
        raise SpecdError("a draft worker runs on one process (--tensor-parallel-size 1)")
    own = draft_method if role == "target" and draft_method in contract.IN_TARGET_METHODS else ""
    if own:
        check_method(own, model_dir)  # before loading: a target without trained exits is refused by name
    if own in contract.APPROXIMATE_METHODS:
        log.warning("draft method %s is APPROXIMATE: greedy outputs may differ from the target's own", own)
    placement = resolve_placement(device, dtype)
    runner = load_runner(model_dir, tensor_parallel_size, kv_budget_mib, with_adapter=needs_adapter(own),
                         placement=placement)
    log.info("%s worker: %s on %s", role, model_dir, placement.describe())
    return WorkerCore(role, runner, model_dir, tensor_parallel_size, own)


async def start_worker(core: WorkerCore, host: str = "127.0.0.1", port: int = 0) -> grpc_server.RunningServer:
    """Start serving `core` (with health and reflection); the caller stops it."""
    servicer = (DraftServicer if core.role == "draft" else TargetServicer)(core)
    server = grpc_server.new_server()
    add = (worker_pb2_grpc.add_DraftWorkerServicer_to_server if core.role == "draft"
           else worker_pb2_grpc.add_TargetWorkerServicer_to_server)
    add(servicer, server)
    running = await grpc_server.start(server, [SERVICE_NAMES[core.role]], host, port)
    log.info("%s worker serving %s on %s:%d", core.role, core.model_dir, host, running.port)
    return running


async def until_quiet(core: WorkerCore, quiet_s: float = DRAIN_QUIET_S, poll_s: float = 0.1) -> None:
    """Return once no model call has come for `quiet_s`: the router has moved this worker's requests."""
    calls, since = core.calls, time.monotonic()
    while time.monotonic() - since < quiet_s:
        await asyncio.sleep(poll_s)
        if core.calls != calls:
            calls, since = core.calls, time.monotonic()


async def serve_worker(core: WorkerCore, host: str, port: int, grace_s: float = 30.0,
                       metrics_port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then report NOT_SERVING but keep answering calls until none has
    come for DRAIN_QUIET_S (at most `grace_s`), then finish the calls under way and stop.
    metrics_port: serve Prometheus /metrics there too (0: any free port)."""
    running = await start_worker(core, host, port)
    running.drain = lambda: until_quiet(core)
    metrics = MetricsServer.start(core.metrics.registry, host, metrics_port) if metrics_port is not None else None
    if metrics:
        log.info("%s worker metrics on %s:%d/metrics", core.role, host, metrics.port)
    try:
        await grpc_server.wait_for_signal()
        started = time.monotonic()
        await running.stop(grace_s)
        log.info("%s worker drained in %.1fs (%d model calls in all)", core.role, time.monotonic() - started,
                 core.calls)
    finally:
        if metrics:
            metrics.stop()
        core.runner.close()
