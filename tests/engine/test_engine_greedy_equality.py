"""Greedy speculative decoding must reproduce plain target decoding token for token."""

from __future__ import annotations

import random

import pytest
from model_support import TEST_PLACEMENT  # tests/ is on sys.path (conftest.py)

from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.runner import ModelRunner


@pytest.fixture(scope="module")
def engine(tiny_models) -> SpeculativeEngine:
    return SpeculativeEngine(ModelRunner.from_dir(tiny_models.target, placement=TEST_PLACEMENT),
                             ModelRunner.from_dir(tiny_models.draft, placement=TEST_PLACEMENT))


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 320) for _ in range(rng.randint(1, 40))] for _ in range(count)]


def _plain(engine: SpeculativeEngine, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    requests = [GenerationRequest(p, max_new, k=0, stop_at_eos=False) for p in prompts]
    return [tokens for tokens, _ in engine.generate(requests)]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_speculative_equals_plain(engine, k, batch):
    prompts = _prompts(8, seed=k * 100 + batch)
    expected = _plain(engine, prompts, 24)
    got, accepted = [], 0
    for i in range(0, len(prompts), batch):
        requests = [GenerationRequest(p, 24, k=k, stop_at_eos=False) for p in prompts[i : i + batch]]
        for tokens, stats in engine.generate(requests):
            got.append(tokens)
            accepted += stats.accepted
    assert got == expected
    assert all(len(t) == 24 for t in got)
    assert accepted > 0, "the noisy draft should agree with the target sometimes"


def test_mixed_k_in_one_batch(engine):
    prompts = _prompts(8, seed=7)
    expected = _plain(engine, prompts, 30)
    requests = [GenerationRequest(p, 30, k=k, stop_at_eos=False) for p, k in zip(prompts, [0, 1, 2, 3, 4, 6, 8, 5])]
    results = engine.generate(requests)
    assert [tokens for tokens, _ in results] == expected
    assert results[0][1].proposed == 0  # k = 0 is plain decoding inside a speculative batch


def test_draft_identical_to_target_accepts_everything(tiny_models):
    target = ModelRunner.from_dir(tiny_models.target, placement=TEST_PLACEMENT)
    engine = SpeculativeEngine(target, ModelRunner.from_dir(tiny_models.target, placement=TEST_PLACEMENT))
    [(tokens, stats)] = engine.generate([GenerationRequest([5, 6, 7], 21, k=4, stop_at_eos=False)])
    assert stats.acceptance_rate == 1.0
    assert stats.steps == 5  # 4 drafts + 1 bonus token per step: 21 tokens in 5 steps (the last one k=0)


def test_caches_are_released(engine):
    engine.generate([GenerationRequest(p, 10, k=3) for p in _prompts(4, seed=3)])
    assert len(engine.target.kv) == 0 and len(engine.draft.kv) == 0
