"""Worker processes killed mid-generation: streams move to another replica without losing or
repeating a token, fall back to k = 0 without a draft, and fail with UNAVAILABLE when no target is left."""

from __future__ import annotations

import signal

import grpc
import pytest
from serving_support import PROMPTS

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
                stub = (worker_pb2_grpc.TargetWorkerStub if role == "target" else worker_pb2_grpc.DraftWorkerStub)(channel)
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
