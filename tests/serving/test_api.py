"""The public API over real gRPC: validation, overload, cancellation, health, reflection, sampling."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving_support import PROMPTS, assert_released

from specd.client import AsyncClient, Client, InvalidRequest, Overloaded, Unavailable
from specd.router.config import RouterConfig


@pytest.fixture
def address(workers, start_router):
    config = RouterConfig(policy="laps-sd", max_batch_size=4, max_queued_requests=4)
    return start_router(config, [workers.addresses["target"]], [workers.addresses["draft"]])


@pytest.mark.parametrize("kwargs,field", [
    ({"prompt": "", "max_new_tokens": 4}, "prompt"),
    ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "x", "max_new_tokens": 100000}, "max_new_tokens"),
    ({"prompt": [5, 100000], "max_new_tokens": 4}, "prompt_tokens[1]"),
    ({"prompt": [5] * 512, "max_new_tokens": 1}, "prompt_tokens"),  # the model's whole context
    ({"prompt": "x " * 600, "max_new_tokens": 1}, "prompt"),
    ({"prompt": "x", "max_new_tokens": 4, "temperature": -1.0}, "sampling.temperature"),
    ({"prompt": "x", "max_new_tokens": 4, "top_p": 1.5}, "sampling.top_p"),
    ({"prompt": "x", "max_new_tokens": 4, "max_k": 99}, "speculation.max_k"),
])
def test_invalid_request_names_the_field(address, kwargs, field):
    with Client(address) as client:
        with pytest.raises(InvalidRequest) as err:
            client.generate(**kwargs)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details.startswith(field + ":")
        with pytest.raises(InvalidRequest):  # streaming is validated the same way
            list(client.stream(**kwargs))


def test_full_queue_is_resource_exhausted(address):
    with Client(address) as client:
        streams = [client.stream(PROMPTS[0], 400, ignore_eos=True) for _ in range(4)]
        iterators = [iter(s) for s in streams]
        for it in iterators:
            next(it)  # all four admitted and generating
        with pytest.raises(Overloaded) as err:
            client.generate("x", 4)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in streams:
            s.cancel()
        # room again once the cancelled requests are gone
        deadline = time.monotonic() + 5
        while True:
            try:
                assert client.generate("x", 2).usage.generated_tokens >= 1
                break
            except Overloaded:
                assert time.monotonic() < deadline
                time.sleep(0.1)


def test_cancelled_stream_frees_worker_kv(address, workers):
    with Client(address) as client:
        stream = client.stream(PROMPTS[1], 400, ignore_eos=True)
        it = iter(stream)
        next(it)
        assert workers.cores["target"].mirrors  # generating: the target holds the request
        stream.cancel()
        with pytest.raises(Exception):
            list(it)
    assert_released(workers.cores["target"], workers.cores["draft"])


def test_stopping_the_router_lets_pending_releases_land(workers, start_router, loop):
    from specd.proto.v1 import common_pb2
    from specd.router.request import Request

    start_router(RouterConfig(policy="fcfs").with_speculation("none"), [workers.addresses["target"]])
    router = start_router.routers.pop()
    scheduler = router.scheduler
    target_core = workers.cores["target"]

    async def finish_then_stop():
        r = Request("finished-at-stop", [5, 6, 7], 4, common_pb2.SamplingParams(), max_k=0, stop_token=None,
                    predicted_length=4.0)
        target = scheduler.pool.live("target")[0]
        scheduler._pin(r, "target", target)
        scheduler.requests[r.id] = r
        await scheduler._prefill(target, [r])
        assert "finished-at-stop" in target_core.mirrors
        scheduler._retire(r)  # what a finished request gets: its Release is scheduled, not yet sent ...
        await scheduler.stop()  # ... when the router shuts its scheduler down
        await router.stop(grace_s=0)

    loop.run(finish_then_stop())
    assert "finished-at-stop" not in target_core.mirrors and target_core.runner.kv.used_tokens() == 0


def test_async_client_stream_cancel_and_deadline(address, workers, loop):
    async def scenario():
        async with AsyncClient(address) as client:
            result = await client.generate(PROMPTS[2], 6, ignore_eos=True)
            assert len(result.tokens) == 6
            chunks = client.stream(PROMPTS[3], 400, ignore_eos=True)
            first = await chunks.__anext__()
            assert first.tokens
            await chunks.aclose()  # leaving early cancels the call
            from specd.client import DeadlineExceeded

            with pytest.raises(DeadlineExceeded):
                await client.generate(PROMPTS[0], 400, ignore_eos=True, timeout=0.05)

    asyncio.run(scenario())
    assert_released(workers.cores["target"], workers.cores["draft"])


def test_sampled_generation_is_seeded_and_bounded(address, tokenizer):
    with Client(address) as client:
        a = client.generate(PROMPTS[0], 16, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True, speculation=False)
        b = client.generate(PROMPTS[0], 16, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True, speculation=False)
        c = client.generate(PROMPTS[0], 16, temperature=0.9, top_k=20, seed=8, ignore_eos=True, max_k=3)
    assert a.tokens == b.tokens  # plain decoding with one seed is reproducible
    assert len(c.tokens) == 16 and all(0 <= t < tokenizer.vocab_size for t in c.tokens)


def test_router_stats_report_live_figures(address, loop):
    with Client(address) as client:
        fresh = client.stats()
        assert fresh.acceptance_rate is None and fresh.finished_requests == 0  # nothing measured yet
        assert (fresh.live_targets, fresh.live_drafts, fresh.policy) == (1, 1, "laps-sd")
        results = [client.generate(p, 24, ignore_eos=True, max_k=4) for p in PROMPTS[:3]]
        stats = client.stats()
    assert stats.finished_requests == 3 and stats.queued_requests == stats.running_requests == 0
    assert 0.0 <= stats.acceptance_rate <= 1.0 and 0 <= stats.current_k <= 8
    assert stats.goodput_tokens_per_s > 0  # 72 tokens streamed within the last minute

    async def asynchronous():
        async with AsyncClient(address) as client:
            return await client.stats()

    assert loop.run(asynchronous()).finished_requests == 3
    assert sum(r.usage.draft_tokens_proposed for r in results) > 0


def test_health_and_reflection_on_every_server(address, workers):
    for target, service in [(address, "specd.v1.Specd"), (workers.addresses["target"], "specd.v1.TargetWorker"),
                            (workers.addresses["draft"], "specd.v1.DraftWorker")]:
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            [answer] = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for s in answer.list_services_response.service}
            assert {service, "grpc.health.v1.Health"} <= names


def test_unreachable_router_is_retried_then_unavailable():
    from specd.router.local import free_port

    with Client(f"127.0.0.1:{free_port()}", retries=2) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.generate("x", 2)
        assert time.monotonic() - started >= 0.2 + 0.5  # two retries with their backoff
        with pytest.raises(Unavailable):
            list(client.stream("x", 2))


def test_a_seeded_request_repeats_under_goodput_speculation(workers, start_router):
    """Found by a user (issue 11): under goodput speculation, identical seeded sampled requests
    returned different outputs because k changed between runs. Now three identical calls agree,
    and equal the output with speculation off."""
    targets, drafts = [workers.addresses["target"]], [workers.addresses["echo"]]
    goodput = start_router(RouterConfig(speculation="goodput"), targets, drafts)
    plain = start_router(RouterConfig(speculation="none"), targets, drafts)
    kwargs = {"max_new_tokens": 24, "temperature": 0.9, "seed": 1234, "ignore_eos": True}
    with Client(goodput) as client:
        runs = [client.generate("def ", **kwargs) for _ in range(3)]
        concurrent = [s for s in (client.stream("def ", **kwargs), client.stream("def ", **kwargs))]
        streamed = [[t for chunk in s for t in chunk.tokens] for s in concurrent]
    with Client(plain) as client:
        reference = client.generate("def ", **kwargs).tokens
    assert any(r.usage.draft_tokens_proposed for r in runs)  # speculation really ran
    assert [r.tokens for r in runs] == [reference] * 3
    assert streamed == [reference] * 2
