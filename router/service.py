"""The public gRPC service of the router (specd.v1.Specd) and `serve_router` that runs it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass

import grpc

from specd.contract import MAX_K
from specd.errors import SpecdError
from specd.metrics_server import MetricsServer
from specd.proto import server as grpc_server
from specd.proto.v1 import serving_pb2, serving_pb2_grpc, worker_pb2
from specd.router.config import RouterConfig
from specd.router.discovery import Discovery, Endpoints
from specd.router.openai_http import HttpServer, OpenAIFrontend
from specd.router.replicas import ReplicaPool
from specd.router.request import Request
from specd.router.scheduler import RequestFailed, Scheduler
from specd.router.speculation import CostModel, LinearFit
from specd.worker.tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger(__name__)
SERVICE_NAME = "specd.v1.Specd"


def invalid(field: str, problem: str) -> RequestFailed:
    return RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


class RequestBuilder:
    """Validates a GenerateRequest against the target model (errors name the field) and turns it
    into a scheduler Request."""

    def __init__(self, config: RouterConfig, target: worker_pb2.ModelInfo, scheduler: Scheduler) -> None:
        self.config = config
        self.tokenizer = Tokenizer.from_model_info(target)
        self.max_context: int = target.max_context
        self.scheduler = scheduler
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}"

    def build(self, msg: serving_pb2.GenerateRequest) -> Request:
        tok = self.tokenizer
        if msg.prompt and msg.prompt_tokens:
            raise invalid("prompt", "set either prompt or prompt_tokens, not both")
        prompt = list(msg.prompt_tokens) if msg.prompt_tokens else tok.encode(msg.prompt)
        if not prompt:
            raise invalid("prompt", "empty (set prompt or prompt_tokens)")
        for i, token in enumerate(prompt):
            if token >= tok.vocab_size:
                raise invalid(f"prompt_tokens[{i}]",
                              f"token id {token} is outside the vocabulary [0, {tok.vocab_size})")
        if msg.max_new_tokens < 1:
            raise invalid("max_new_tokens", "must be at least 1")
        if len(prompt) >= self.max_context:  # no room for even one new token: the prompt is at fault
            raise invalid("prompt_tokens" if msg.prompt_tokens else "prompt",
                          f"{len(prompt)} tokens leave no room for new tokens in the model's context of "
                          f"{self.max_context} tokens")
        if len(prompt) + msg.max_new_tokens > self.max_context:
            raise invalid("max_new_tokens", f"prompt ({len(prompt)} tokens) + max_new_tokens ({msg.max_new_tokens}) "
                                            f"exceeds the model's context of {self.max_context} tokens")
        s = msg.sampling
        if not (s.temperature >= 0 and math.isfinite(s.temperature)):
            raise invalid("sampling.temperature", f"must be a finite number >= 0, got {s.temperature}")
        if not 0 <= s.top_p <= 1:
            raise invalid("sampling.top_p", f"must be in (0, 1] (0 means 1), got {s.top_p}")
        if msg.speculation.max_k > MAX_K:
            raise invalid("speculation.max_k", f"must be at most {MAX_K}, got {msg.speculation.max_k}")
        if len(msg.request_id) > 128:
            raise invalid("request_id", "longer than 128 characters")
        limit = self.config.k_limit
        max_k = 0 if msg.speculation.disabled else min(msg.speculation.max_k or limit, limit)
        rid = f"{self._prefix}-{next(self._ids)}" + (f"-{msg.request_id}" if msg.request_id else "")
        return Request(id=rid, prompt=prompt, max_new_tokens=msg.max_new_tokens, sampling=s, max_k=max_k,
                       stop_token=None if msg.ignore_eos else tok.eos_token_id,
                       predicted_length=self.scheduler.lengths.predict(msg.max_new_tokens))


def _usage(r: Request) -> serving_pb2.Usage:
    return serving_pb2.Usage(prompt_tokens=len(r.prompt), generated_tokens=r.generated,
                             draft_tokens_proposed=r.proposed, draft_tokens_accepted=r.accepted,
                             iterations=r.iterations)


def _timing(r: Request) -> serving_pb2.Timing:
    def since(t: float | None) -> float:
        return (t - r.arrival) if t is not None else 0.0

    return serving_pb2.Timing(queue_seconds=since(r.first_scheduled), ttft_seconds=since(r.first_token),
                              total_seconds=since(r.finished_at))


def cost_fit(costs: CostModel) -> serving_pb2.CostFit:
    """The goodput cost model as it stands (what `specd bench serve` replays the run's step costs from)."""
    def fit(f: LinearFit) -> serving_pb2.PassFit:
        return serving_pb2.PassFit(base=f.base, per_token=f.per_token, per_context=f.per_context)

    return serving_pb2.CostFit(target=fit(costs.target_pass), draft=fit(costs.draft_pass),
                               target_overhead_s=costs.target_overhead, draft_overhead_s=costs.draft_overhead,
                               target_overhead_mean_s=costs.target_overhead_mean,
                               draft_overhead_mean_s=costs.draft_overhead_mean)


class SpecdServicer(serving_pb2_grpc.SpecdServicer):
    def __init__(self, builder: RequestBuilder, scheduler: Scheduler) -> None:
        self.builder = builder
        self.scheduler = scheduler

    async def _start(self, msg: serving_pb2.GenerateRequest, context) -> Request:
        try:
            r = self.builder.build(msg)
            self.scheduler.admit(r)
        except RequestFailed as exc:
            await context.abort(exc.code, str(exc))
        return r

    async def _events(self, r: Request, context):
        """Lists of new tokens until the end; a failure aborts the call with its status."""
        try:
            while (event := await r.events.get()) is not None:
                if isinstance(event, RequestFailed):
                    await context.abort(event.code, str(event))
                yield event
        finally:
            self.scheduler.cancel(r)  # no-op when finished; frees the KV caches when the client left

    async def Generate(self, request, context):
        r = await self._start(request, context)
        decoder = StreamDecoder(self.builder.tokenizer)
        async for tokens in self._events(r, context):
            yield serving_pb2.GenerateResponse(text=decoder.push(tokens), tokens=tokens, request_id=request.request_id)
        yield serving_pb2.GenerateResponse(text=decoder.flush(), finish_reason=r.finish_reason, usage=_usage(r),
                                           timing=_timing(r), request_id=request.request_id)

    async def Stats(self, request, context):
        stats = self.scheduler.stats()
        stats.costs.CopyFrom(cost_fit(self.scheduler.decisions.costs))
        return stats

    async def GenerateUnary(self, request, context):
        r = await self._start(request, context)
        tokens = [t async for chunk in self._events(r, context) for t in chunk]
        return serving_pb2.GenerateResult(text=self.builder.tokenizer.decode(tokens), tokens=tokens,
                                          finish_reason=r.finish_reason, usage=_usage(r), timing=_timing(r),
                                          request_id=request.request_id)


async def wait_for_target(pool: ReplicaPool, timeout_s: float) -> worker_pb2.ModelInfo:
    deadline = time.monotonic() + timeout_s
    while True:
        live = [r for r in pool.live("target") if r.info]
        if live:
            return live[0].info
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            known = sorted(r.address for r in pool.replicas.values() if r.role == "target")
            raise SpecdError(f"no target worker answered within {timeout_s:.0f}s (known: {known or 'none'})")
        pool.changed.clear()
        try:
            await asyncio.wait_for(pool.changed.wait(), min(remaining, 1.0))
        except asyncio.TimeoutError:
            pass


@dataclass
class RunningRouter:
    running: grpc_server.RunningServer
    scheduler: Scheduler
    pool: ReplicaPool
    discovery: Discovery
    _loop_task: asyncio.Task
    metrics: MetricsServer | None = None
    http: HttpServer | None = None

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace_s: float = 30.0) -> None:
        """Drain (finish admitted requests, admit none), then shut everything down. HTTP streams
        under way finish during the drain; new HTTP requests are refused (503) meanwhile."""
        try:
            await self.running.stop(grace_s)
            if self.http is not None:
                await self.http.stop()
            log.info("length predictor: %d requests, mean relative error %.1f%%", self.scheduler.lengths.count,
                     100 * self.scheduler.lengths.mean_relative_error)
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            self._loop_task.cancel()
            await self.scheduler.stop()
            self.discovery.stop()
            await self.pool.close()


async def start_router(config: RouterConfig, discovery: Discovery, host: str = "127.0.0.1", port: int = 0,
                       ready_timeout_s: float = 300.0, metrics_port: int | None = None,
                       http_port: int | None = None) -> RunningRouter:
    """Follow `discovery`, wait for a target worker (its tokenizer), then serve the public API;
    metrics_port: serve Prometheus /metrics there too, http_port: the OpenAI-compatible HTTP API
    (0: any free port; None: not at all)."""
    loop = asyncio.get_running_loop()
    pool = ReplicaPool()

    def on_endpoints(endpoints: Endpoints) -> None:  # called on the discovery's thread
        loop.call_soon_threadsafe(pool.set_endpoints, endpoints)

    discovery.subscribe(on_endpoints)
    discovery.start()
    pool.set_endpoints(discovery.current())
    scheduler = Scheduler(config, pool)
    task = asyncio.ensure_future(scheduler.run())
    try:
        info = await wait_for_target(pool, ready_timeout_s)
        builder = RequestBuilder(config, info, scheduler)
        server = grpc_server.new_server()
        serving_pb2_grpc.add_SpecdServicer_to_server(SpecdServicer(builder, scheduler), server)
        running = await grpc_server.start(server, [SERVICE_NAME], host, port, drain=scheduler.drain)
        http = (await HttpServer.start(OpenAIFrontend(builder, scheduler, info.model), host, http_port)
                if http_port is not None else None)
    except BaseException:
        task.cancel()
        await scheduler.stop()
        discovery.stop()
        await pool.close()
        raise
    metrics = MetricsServer.start(scheduler.metrics.registry, host, metrics_port) if metrics_port is not None else None
    log.info("router serving on %s:%d (policy %s, speculation %s, model %s)%s%s", host, running.port, config.policy,
             config.speculation_label, info.model, f", metrics on :{metrics.port}" if metrics else "",
             f", OpenAI HTTP on :{http.port}" if http else "")
    return RunningRouter(running, scheduler, pool, discovery, task, metrics, http)


async def serve_router(config: RouterConfig, discovery: Discovery, host: str = "0.0.0.0", port: int = 50051,
                       ready_timeout_s: float = 300.0, grace_s: float = 30.0, metrics_port: int | None = None,
                       http_port: int | None = None) -> None:
    """Serve the public API until SIGTERM/SIGINT, then drain: finish admitted requests, stop."""
    router = await start_router(config, discovery, host, port, ready_timeout_s, metrics_port, http_port)
    await grpc_server.wait_for_signal()
    await router.stop(grace_s)
