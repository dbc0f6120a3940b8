"""Greedy outputs through router + workers (real gRPC on loopback) equal plain target decoding."""

from __future__ import annotations

import concurrent.futures

import pytest
from serving_support import PROMPTS, assert_released

from specd.client import Client
from specd.router.config import RouterConfig


@pytest.mark.parametrize("speculation,draft", [("fixed:3", "draft"), ("goodput", "draft"), ("fixed:4", "echo"),
                                                ("none", None)])
def test_greedy_equals_plain_target_decoding(workers, start_router, reference, tokenizer, speculation, draft):
    config = RouterConfig(policy="laps-sd", max_batch_size=4).with_speculation(speculation)
    address = start_router(config, [workers.addresses["target"]], [workers.addresses[draft]] if draft else [])
    with Client(address, timeout=60) as client:
        for prompt in PROMPTS[:4]:
            result = client.generate(prompt, 24, ignore_eos=True)
            assert result.tokens == reference(tokenizer.encode(prompt), 24), prompt
            assert result.finish_reason == "length"
            assert result.usage.generated_tokens == 24
            if speculation.startswith("fixed"):
                assert result.usage.draft_tokens_proposed > 0
            if draft == "echo":  # the draft is the target itself: every greedy draft is accepted
                assert result.usage.draft_tokens_accepted == result.usage.draft_tokens_proposed
                assert result.usage.iterations < 24
            if speculation == "none":
                assert result.usage.draft_tokens_proposed == 0 and result.usage.iterations == 24


def test_many_concurrent_streams(workers, start_router, reference, tokenizer):
    config = RouterConfig(policy="laps-sd", max_batch_size=8).with_speculation("fixed:2")
    address = start_router(config, [workers.addresses["target"]], [workers.addresses["draft"]])
    jobs = [(PROMPTS[i % len(PROMPTS)], 8 + (i * 5) % 25) for i in range(32)]

    def stream(job):
        prompt, n = job
        with Client(address, timeout=120) as client:
            chunks = list(client.stream(prompt, n, ignore_eos=True))
        return [t for c in chunks for t in c.tokens], chunks[-1]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(stream, jobs))
    for (prompt, n), (tokens, last) in zip(jobs, outputs):
        assert tokens == reference(tokenizer.encode(prompt), n)
        assert last.finish_reason == "length" and last.usage.generated_tokens == n
        assert last.timing.ttft_seconds <= last.timing.total_seconds
    # every KV cache is released once the streams have ended
    assert_released(workers.cores["target"], workers.cores["draft"])
