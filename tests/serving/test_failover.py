"""Worker processes killed mid-generation: streams move to another replica without losing or
repeating a token, fall back to k = 0 without a draft, and fail with UNAVAILABLE when no target is left."""

from __future__ import annotations

import signal

import grpc
import pytest
from serving_support import PROMPTS, Endpoints

from specd.client import Client, Unavailable
from specd.proto.v1 import worker_pb2, worker_pb2_grpc
from specd.router.config import RouterConfig
from specd.router.local import LocalStack

N = 400


@pytest.fixture
def stack(models, tmp_path):
    target, draft = models
    s = LocalStack()
    try:
        for _ in range(2):
            s.start_worker("target", target, log_dir=tmp_path)
        s.start_worker("draft", draft, log_dir=tmp_path)
        for worker in s.workers:
            s.wait_serving(worker, 120)
        yield s
    finally:
        s.stop(grace_s=5)


def holder(stack: LocalStack, role: str):
    """The worker process of `role` that holds a request right now."""
    for worker in stack.workers:
        if worker.name.startswith(role) and worker.alive():
            with grpc.insecure_channel(worker.address) as channel:
                kind = worker_pb2_grpc.TargetWorkerStub if role == "target" else worker_pb2_grpc.DraftWorkerStub
                stub = kind(channel)
                if stub.Stats(worker_pb2.StatsRequest(), timeout=5).active_requests:
                    return worker
    raise AssertionError(f"no {role} worker holds the request")


def kill(worker) -> None:
    worker.popen.send_signal(signal.SIGKILL)
    worker.popen.wait(10)


def stream_with_kill(address: str, prompt: str, kill_first):
    """Stream N greedy tokens, running kill_first() after the first chunk; returns (tokens, last chunk)."""
    tokens, last = [], None
    with Client(address, timeout=120) as client:
        for i, chunk in enumerate(client.stream(prompt, N, ignore_eos=True, request_id="victim")):
            if i == 0:
                kill_first()
            tokens += chunk.tokens
            last = chunk
    return tokens, last


def test_killed_target_moves_its_streams_then_unavailable(stack, start_router, reference, tokenizer):
    config = RouterConfig(policy="laps-sd").with_speculation("fixed:2")
    address = start_router(config, stack.addresses("target"), stack.addresses("draft"))
    killed = []

    def kill_target():
        victim = holder(stack, "target")
        kill(victim)
        killed.append(victim)

    tokens, last = stream_with_kill(address, PROMPTS[0], kill_target)
    assert killed and not killed[0].alive()
    assert tokens == reference(tokenizer.encode(PROMPTS[0]), N)  # nothing lost, nothing repeated
    assert last.usage.generated_tokens == N
    # the last target goes too: the stream fails with UNAVAILABLE instead of hanging
    with pytest.raises(Unavailable):
        stream_with_kill(address, PROMPTS[1], lambda: kill(holder(stack, "target")))


def test_killed_draft_falls_back_to_plain_decoding(stack, start_router, reference, tokenizer):
    config = RouterConfig(policy="fcfs").with_speculation("fixed:3")
    address = start_router(config, stack.addresses("target"), stack.addresses("draft"))
    tokens, last = stream_with_kill(address, PROMPTS[2], lambda: kill(holder(stack, "draft")))
    assert tokens == reference(tokenizer.encode(PROMPTS[2]), N)
    assert last.usage.draft_tokens_proposed < 3 * last.usage.iterations  # k = 0 after the kill
    with Client(address) as client:  # new requests are served without a draft pool
        result = client.generate(PROMPTS[3], 12, ignore_eos=True)
    assert result.tokens == reference(tokenizer.encode(PROMPTS[3]), 12)
    assert result.usage.draft_tokens_proposed == 0


def test_target_dropped_by_discovery_mid_iteration_loses_no_token(stack, loop, reference, tokenizer):
    """Found on the real node: a target pod deleted under a stream left discovery while an
    iteration had already picked it, and the router's next call on the closed channel failed the
    stream with INTERNAL "Channel is closed". Dropping and re-adding the targets many times while
    streaming must leave the output equal to plain decoding. This hits that race only sometimes
    (timing); the test below checks the mechanism deterministically."""
    import threading
    import time

    from specd.router.service import start_router

    targets = [w.address for w in stack.workers if w.name.startswith("target")]
    drafts = [w.address for w in stack.workers if w.name.startswith("draft")]
    discovery = Endpoints(targets, drafts)
    router = loop.run(start_router(RouterConfig(), discovery, ready_timeout_s=30))
    try:
        done = threading.Event()

        def churn() -> None:  # drop each target in turn: every other drop hits the stream's
            while not done.is_set():
                for dropped in targets:
                    discovery.set("target", [a for a in targets if a != dropped])
                    time.sleep(0.05)
                    discovery.set("target", targets)
                    time.sleep(0.15)

        prompt = PROMPTS[0]
        tokens = []
        mover = threading.Thread(target=churn, daemon=True)
        try:
            with Client(f"127.0.0.1:{router.port}", timeout=60) as client:
                for chunk in client.stream(prompt, N, ignore_eos=True):
                    tokens += chunk.tokens
                    if mover.ident is None:  # after the first tokens
                        mover.start()
        finally:
            done.set()
            mover.join(10)
        assert tokens == reference(tokenizer.encode(prompt), N)
    finally:
        loop.run(router.stop(grace_s=1))


def test_a_replica_dropped_by_discovery_keeps_answering_calls_already_routed_to_it(loop, workers):
    """The mechanism behind the test above, deterministically: right after discovery drops a
    replica, a call an iteration already routed to it still reaches the worker (the channel
    drains instead of closing at once, which made such calls fail with "Channel is closed")."""
    import asyncio

    from specd.router.replicas import ReplicaPool

    address = workers.addresses["target"]

    async def scenario() -> int:
        pool = ReplicaPool()
        pool.set_endpoints({"target": [address], "draft": []})
        while not pool.live("target"):
            await asyncio.sleep(0.05)
        replica = pool.replicas[address]
        pool.set_endpoints({"target": [], "draft": []})
        await asyncio.sleep(0.1)  # a close scheduled by the drop has run by now
        assert not replica.live and address not in pool.replicas
        info = await replica.stub.Info(worker_pb2.InfoRequest(), timeout=10)
        await pool.close()
        return info.vocab_size

    assert loop.run(scenario()) > 0
