"""Drafting inside the target (Kangaroo's early exit, HiSpec's hierarchy, n-gram lookup): the
runner resumes tokens it holds at a shallow depth instead of recomputing them, and every method's
greedy output equals plain decoding across batch sizes and speculation lengths."""

from __future__ import annotations

import random

import pytest
import torch
from model_support import TEST_PLACEMENT  # tests/ is on sys.path (conftest.py)

from specd.errors import SpecdError
from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.methods import make_proposer, needs_adapter
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.sampling import SamplingParams
from specd.worker.self_drafting import EarlyExitProposer, NgramProposer
from specd.worker.specee import SpecEEDecoder
from specd.worker.speculation import DraftRequest

SELF_METHODS = ["early-exit", "hierarchical", "ngram"]


def _runner(path, adapter: bool = True) -> ModelRunner:
    return ModelRunner.from_dir(path, with_adapter=adapter, placement=TEST_PLACEMENT)


def _rows_per_layer(runner: ModelRunner) -> tuple[dict[int, int], list]:
    """Count the token rows each layer processes (forward hooks)."""
    seen: dict[int, int] = {}
    handles = []
    for index, layer in enumerate(runner.model.model.layers):
        def hook(_module, args, index=index):
            seen[index] = seen.get(index, 0) + args[0].shape[0]
        handles.append(layer.register_forward_pre_hook(hook))
    return seen, handles


def test_resuming_shallow_tokens_gives_the_logits_of_one_full_pass(early_exit_target):
    runner = _runner(early_exit_target)
    prompt, drafts = [5, 9, 12, 40, 41, 7, 3, 99, 100, 8], [17, 18, 19]
    runner.forward([ForwardItem("r", prompt[:-1], num_logits=0)])
    # drafting: the pending prompt token and two drafts go through layer 0 only (the adapter's exit)
    assert runner.sync("r", prompt, depth=1) == prompt[-1:]
    for token in [prompt[-1]] + drafts[:-1]:
        runner.forward([ForwardItem("r", [token], depth=1)])
    assert runner.kv.get("r").depths[-3:] == [1, 1, 1]
    seen, handles = _rows_per_layer(runner)
    assert runner.sync("r", prompt) == prompt[-1:]
    [verified] = runner.forward([ForwardItem("r", prompt[-1:] + drafts, num_logits=4)])
    for handle in handles:
        handle.remove()
    # layer 0 ran only for the last draft; layers 1..3 for the four verified positions
    assert seen == {0: 1, 1: 4, 2: 4, 3: 4}
    fresh = ModelRunner.from_dir(early_exit_target, placement=TEST_PLACEMENT)
    [expected] = fresh.forward([ForwardItem("f", prompt + drafts, num_logits=4)])
    torch.testing.assert_close(verified, expected, rtol=1e-4, atol=1e-4)
    assert runner.kv.get("r").partial is None and runner.kv.get("r").full_length == len(prompt) + 3


def test_adapter_logits_match_a_direct_computation(early_exit_target):
    runner = _runner(early_exit_target)
    sequence = [3, 1, 4, 1, 5, 9, 2, 6]
    runner.forward([ForwardItem("r", sequence[:4], num_logits=0)])  # the adapter sees these on its way
    [incremental] = runner.forward([ForwardItem("r", sequence[4:], num_logits=4, depth=1)])
    fresh = _runner(early_exit_target)
    [direct] = fresh.forward([ForwardItem("f", sequence, num_logits=4, depth=1)])
    torch.testing.assert_close(incremental, direct, rtol=1e-4, atol=1e-4)
    [full] = fresh.forward([ForwardItem("g", sequence, num_logits=4)])
    assert not torch.allclose(direct, full)  # the exit is not the full model


def test_a_forward_to_a_depth_drops_cached_tokens_it_was_not_asked_for(early_exit_target):
    runner = _runner(early_exit_target)
    runner.forward([ForwardItem("r", [1, 2, 3], num_logits=0)])
    runner.forward([ForwardItem("r", [4, 5, 6], num_logits=0, depth=2)])
    runner.forward([ForwardItem("r", [4, 7], num_logits=1)])  # 5 and 6 disagree: gone
    assert runner.cached_tokens("r") == [1, 2, 3, 4, 7]
    assert runner.kv.get("r").depths == [4] * 5
    with pytest.raises(SpecdError, match="depth 5 out of range"):
        runner.forward([ForwardItem("r", [8], depth=5)])


def _prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # a repeated phrase inside each prompt gives n-gram lookup something to find
    return [(phrase := [rng.randrange(1, 320) for _ in range(rng.randint(2, 6))])
            + [rng.randrange(1, 320) for _ in range(rng.randint(0, 20))] + phrase for _ in range(count)]


def _engine(path, method: str) -> SpeculativeEngine:
    target = _runner(path, adapter=needs_adapter(method))
    return SpeculativeEngine(target, proposer=make_proposer(method, target, path))


@pytest.mark.parametrize("method", SELF_METHODS)
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_output_equals_plain_decoding(early_exit_target, method, k, batch):
    prompts = _prompts(6, seed=k * 10 + batch)
    plain = SpeculativeEngine(_runner(early_exit_target, adapter=False))
    expected = [t for t, _ in plain.generate([GenerationRequest(p, 20, k=0, stop_at_eos=False) for p in prompts])]
    engine = _engine(early_exit_target, method)
    got, accepted, proposed = [], 0, 0
    for i in range(0, len(prompts), batch):
        for tokens, stats in engine.generate([GenerationRequest(p, 20, k=k, stop_at_eos=False)
                                              for p in prompts[i : i + batch]]):
            got.append(tokens)
            accepted, proposed = accepted + stats.accepted, proposed + stats.proposed
    assert got == expected
    assert 0 < accepted < proposed or method == "ngram", "drafts should be accepted and rejected"
    assert engine.target.kv.used_tokens() == 0  # every cache released


def test_early_exit_stops_drafting_below_the_confidence_threshold(early_exit_target):
    target = _runner(early_exit_target)
    request = DraftRequest("r", [5, 6, 7, 8], 8, SamplingParams(), torch.Generator())
    eager = EarlyExitProposer(target, confidence=0.0).propose([request])[0]
    target.release("r")
    never = EarlyExitProposer(target, confidence=1.01).propose([request])[0]
    assert len(eager.tokens) == 8 and never.tokens == []


def test_ngram_lookup_takes_the_latest_longest_match():
    ngram = NgramProposer(vocab_size=100, device=torch.device("cpu"), sizes=(1, 3))
    assert ngram.lookup([1, 2, 3, 9, 1, 2, 3, 8, 5, 1, 2, 3], 2) == [8, 5]  # latest occurrence of 1 2 3
    assert ngram.lookup([4, 7, 1, 2, 9, 2], 3) == [9, 2]  # falls back to the 1-gram "2"; stops at the end
    assert ngram.lookup([1, 2, 3], 4) == []


def _specee(path, threshold: float) -> tuple[SpeculativeEngine, SpecEEDecoder]:
    import dataclasses

    target = _runner(path)
    decoder = SpecEEDecoder.from_dir(target, path)
    decoder.config = dataclasses.replace(decoder.config, threshold=threshold)
    return SpeculativeEngine(target, exit_decoder=decoder), decoder


def test_specee_that_never_exits_is_plain_decoding(early_exit_target):
    prompts = _prompts(4, seed=3)
    plain = SpeculativeEngine(_runner(early_exit_target, adapter=False))
    expected = [t for t, _ in plain.generate([GenerationRequest(p, 16, k=0, stop_at_eos=False) for p in prompts])]
    engine, decoder = _specee(early_exit_target, threshold=1.0)
    got = [t for t, _ in engine.generate([GenerationRequest(p, 16, k=0, stop_at_eos=False) for p in prompts])]
    assert got == expected
    assert set(decoder.exits) == {4}  # every token went through the whole model


def test_specee_exits_early_and_finishes_the_exited_tokens_exactly(early_exit_target):
    """τ = 0: every token exits at the first scheduled depth, as its likeliest candidate there; the
    skipped layers run with the next token, so the cache ends up as a plain pass would fill it."""
    engine, decoder = _specee(early_exit_target, threshold=0.0)
    prompt = [5, 9, 12, 40, 41, 7]
    engine.add(GenerationRequest(prompt, 6, k=0, stop_at_eos=False, request_id="r"))
    engine.prefill()
    tokens = []
    for _ in range(5):
        tokens += engine.step()[0].new_tokens
    assert set(decoder.exits) == {2} and len(tokens) == 5
    cache = engine.target.kv.get("r")
    # the last prompt token and the first four generated ones exited at depth 2; nothing has
    # needed their deeper layers yet (the fifth is pending: not in the cache)
    assert cache.depths == [4] * (len(prompt) - 1) + [2] * 5
    [logits] = engine.target.forward([ForwardItem("r", engine.target.sync("r", prompt + tokens), num_logits=1)])
    fresh = ModelRunner.from_dir(early_exit_target, placement=TEST_PLACEMENT)
    [expected] = fresh.forward([ForwardItem("f", prompt + tokens, num_logits=1)])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    for layer in range(4):  # keys of every layer equal a plain pass over the same tokens
        n = len(prompt) + len(tokens)
        torch.testing.assert_close(cache.keys[layer][:, :n], fresh.kv.get("f").keys[layer][:, :n], rtol=1e-4, atol=1e-4)


def test_a_draft_vocabulary_restricts_drafts_and_stays_exact(early_exit_target):
    """The adapter's draft vocabulary (the most frequent tokens) cuts the head's cost; drafts come
    only from it, and verification keeps the output exact."""
    target = _runner(early_exit_target)
    target.adapter.vocabulary = torch.arange(0, target.config.vocab_size, 2)
    [logits] = target.forward([ForwardItem("v", [5, 6, 7], depth=target.adapter.exit_layer)])
    assert torch.isinf(logits[0, 1::2]).all() and torch.isfinite(logits[0, ::2]).all()
    target.release("v")
    engine = SpeculativeEngine(target, proposer=make_proposer("early-exit", target, early_exit_target))
    prompts = _prompts(4, seed=11)
    plain = SpeculativeEngine(_runner(early_exit_target, adapter=False))
    expected = [t for t, _ in plain.generate([GenerationRequest(p, 16, k=0, stop_at_eos=False) for p in prompts])]
    results = engine.generate([GenerationRequest(p, 16, k=4, stop_at_eos=False) for p in prompts])
    assert [t for t, _ in results] == expected
    assert sum(s.proposed for _, s in results) > 0
