"""A target worker whose KV budget is full: the router preempts by recomputation, loses nothing."""

from __future__ import annotations

import concurrent.futures
import logging

import pytest
from serving_support import PROMPTS, assert_released

from specd.client import Client, Overloaded
from specd.router.config import RouterConfig

NEW_TOKENS = 40
SPEC_K = 3
CONCURRENT = PROMPTS[:6]


@pytest.fixture
def small_target(workers, models, tokenizer):
    """A second target worker on the same model whose KV budget holds about two and a half requests."""
    from specd.worker.runner import ModelRunner

    bytes_per_token = ModelRunner.from_dir(models[0]).kv.bytes_per_token
    longest_prompt = max(len(tokenizer.encode(p)) for p in CONCURRENT)
    tokens = int(2.5 * (longest_prompt + NEW_TOKENS + SPEC_K + 1))  # prompt + output + drafts under verification
    address = workers.start("small-kv", "target", models[0], kv_budget_mib=tokens * bytes_per_token / 2**20)
    yield address, workers.cores["small-kv"]
    workers.stop("small-kv")


def test_full_kv_preempts_and_recomputes_without_losing_requests(small_target, workers, start_router, reference,
                                                                   tokenizer, caplog):
    address, core = small_target
    config = RouterConfig(policy="laps-sd", max_batch_size=4).with_speculation(f"fixed:{SPEC_K}")
    router = start_router(config, [address], [workers.addresses["draft"]])
    prompts = CONCURRENT

    def generate(prompt: str) -> list[int]:
        with Client(router, timeout=120) as client:
            return client.generate(prompt, NEW_TOKENS, ignore_eos=True).tokens

    with caplog.at_level(logging.INFO, logger="specd.router.scheduler"):
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            outputs = list(pool.map(generate, prompts))
    for prompt, tokens in zip(prompts, outputs):
        assert tokens == reference(tokenizer.encode(prompt), NEW_TOKENS), prompt
    evictions = [r for r in caplog.records if "its cache is recomputed" in r.getMessage()]
    assert evictions, "six requests cannot fit in a budget of two and a half: some must have been preempted"
    assert_released(core, workers.cores["draft"])


def test_a_request_too_large_for_the_kv_budget_fails_with_resource_exhausted(small_target, workers, start_router):
    address, core = small_target
    router = start_router(RouterConfig(policy="fcfs").with_speculation("none"), [address])
    with Client(router, timeout=60) as client:
        with pytest.raises(Overloaded, match="KV cache"):  # prompt + output > the whole budget
            client.generate(PROMPTS[0], core.runner.kv.budget_tokens, ignore_eos=True)
        assert len(client.generate(PROMPTS[1], 8, ignore_eos=True).tokens) == 8  # the worker serves on
