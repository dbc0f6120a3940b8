"""Target workers that draft inside themselves (early-exit, hierarchical, ngram) behind the router:
no draft pool, the router still chooses k (fixed or goodput), and greedy output is plain decoding."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from serving_support import PROMPTS, assert_released

from specd import contract
from specd.client import Client
from specd.router.config import RouterConfig
from specd.worker.config import LlamaConfig
from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.runner import ModelRunner

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/model_support.py

from model_support import build_early_exit_target  # noqa: E402


@pytest.fixture(scope="module")
def self_target(tmp_path_factory, models) -> Path:
    config = LlamaConfig.from_file(models[0] / "config.json")
    return build_early_exit_target(tmp_path_factory.mktemp("self-target"), config,
                                   (models[0] / "tokenizer.json").read_text(), head_std=2.0)


@pytest.fixture(scope="module")
def self_reference(self_target):
    engine = SpeculativeEngine(ModelRunner.from_dir(self_target))

    def generate(prompt: list[int], n: int) -> list[int]:
        return engine.generate([GenerationRequest(prompt, n, k=0, stop_at_eos=False)])[0][0]

    return generate


@pytest.mark.parametrize("speculation", ["fixed:4", "goodput"])
@pytest.mark.parametrize("method", contract.TARGET_DRAFT_METHODS)
def test_drafting_inside_the_target_serves_plain_decoding(worker_pool, start_router, tokenizer, self_target,
                                                          self_reference, method, speculation):
    address = worker_pool.start("self", "target", self_target, draft_method=method)
    assert worker_pool.cores["self"].info().draft_method == method
    config = RouterConfig(policy="laps-sd", max_batch_size=4).with_speculation(speculation)
    router = start_router(config, [address])  # no draft workers at all
    proposed = accepted = 0
    with Client(router, timeout=60) as client:
        for prompt in PROMPTS[:4]:
            result = client.generate(prompt, 24, ignore_eos=True)
            assert result.tokens == self_reference(tokenizer.encode(prompt), 24), prompt
            proposed += result.usage.draft_tokens_proposed
            accepted += result.usage.draft_tokens_accepted
    if speculation.startswith("fixed") and method != "ngram":
        assert 0 < accepted < proposed, (accepted, proposed)
    assert_released(worker_pool.cores["self"])


def test_a_target_without_exits_is_refused_by_name(models):
    from specd.errors import SpecdError
    from specd.worker.servers.service import load_core

    with pytest.raises(SpecdError, match="early_exit.json"):
        load_core("target", str(models[0]), draft_method="early-exit")


def test_specee_target_serves_with_early_exits(worker_pool, start_router, self_target):
    """SpecEE is approximate: the worker decodes greedy plain steps with early exits (its random
    test predictors exit often); a sampled request still goes through the whole model."""
    address = worker_pool.start("specee", "target", self_target, draft_method="specee")
    core = worker_pool.cores["specee"]
    assert core.info().draft_method == "specee"
    router = start_router(RouterConfig(policy="fcfs", max_batch_size=4).with_speculation("none"), [address])
    with Client(router, timeout=60) as client:
        greedy = client.generate(PROMPTS[0], 24, ignore_eos=True)
        sampled = client.generate(PROMPTS[1], 8, temperature=0.8, seed=7, ignore_eos=True)
    assert len(greedy.tokens) == 24 and greedy.usage.draft_tokens_proposed == 0
    assert len(sampled.tokens) == 8
    early = sum(n for depth, n in core.exit_decoder.exits.items() if depth < 4)
    assert early > 0 and sum(core.exit_decoder.exits.values()) == 24  # only the greedy request's tokens
    assert_released(core)
