"""ModelRunner: KV rollback, sync, batching of different lengths, budget and context limits,
and agreement with Hugging Face transformers on the same checkpoint."""

from __future__ import annotations

import pytest
import torch
from model_support import TEST_PLACEMENT  # tests/ is on sys.path (conftest.py)

from specd.errors import SpecdError
from specd.worker.kv_cache import KVBudgetExceeded
from specd.worker.runner import ContextTooLong, ForwardItem, ModelRunner


@pytest.fixture
def runner(tiny_models) -> ModelRunner:
    return ModelRunner.from_dir(tiny_models.target, placement=TEST_PLACEMENT)


def _full(runner: ModelRunner, tokens: list[int]) -> torch.Tensor:
    rid = f"ref-{len(tokens)}-{tokens[0]}"
    [logits] = runner.forward([ForwardItem(rid, tokens, num_logits=len(tokens))])
    runner.release(rid)
    return logits


def test_rollback_then_new_tokens_equals_fresh_computation(runner):
    runner.forward([ForwardItem("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], num_logits=0)])
    runner.truncate("a", 6)
    assert runner.cached_tokens("a") == [1, 2, 3, 4, 5, 6]
    [after] = runner.forward([ForwardItem("a", [50, 60, 70], num_logits=3)])
    expected = _full(runner, [1, 2, 3, 4, 5, 6, 50, 60, 70])[-3:]
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)


def test_sync_rolls_back_to_the_committed_prefix(runner):
    runner.forward([ForwardItem("a", [1, 2, 3, 9, 9], num_logits=0)])
    assert runner.sync("a", [1, 2, 3, 4]) == [4]  # 9, 9 were rejected drafts
    assert runner.cached_tokens("a") == [1, 2, 3]
    assert runner.sync("a", [1, 2, 3, 4, 5]) == [4, 5]
    assert runner.sync("new", [7, 8]) == [7, 8]


def test_batch_of_different_lengths_matches_one_by_one(runner):
    prompts = {"a": [3, 1, 4, 1, 5, 9, 2, 6], "b": [2, 7], "c": [1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9]}
    batched = runner.forward([ForwardItem(rid, p, num_logits=2) for rid, p in prompts.items()])
    for (rid, p), logits in zip(prompts.items(), batched):
        torch.testing.assert_close(logits, _full(runner, p)[-2:], rtol=1e-4, atol=1e-4)


def test_release_frees_the_cache(runner):
    runner.forward([ForwardItem("a", [1, 2, 3])])
    assert runner.kv.used_tokens() == 3
    assert runner.release("a") and not runner.release("a")
    assert runner.kv.used_tokens() == 0


def test_kv_budget_is_enforced_with_a_clear_error(tiny_models):
    runner = ModelRunner.from_dir(tiny_models.target, kv_budget_mib=0.05, placement=TEST_PLACEMENT)
    budget = runner.kv.budget_tokens
    runner.forward([ForwardItem("a", [1] * (budget - 2), num_logits=0)])
    with pytest.raises(KVBudgetExceeded, match="KV cache budget exhausted"):
        runner.forward([ForwardItem("b", [1, 2, 3])])
    assert "b" not in runner.kv  # a refused request leaves nothing behind


def test_context_too_long(runner):
    with pytest.raises(ContextTooLong, match="context is 128"):
        runner.forward([ForwardItem("a", [1] * 129)])


@pytest.mark.parametrize("item, message", [
    (ForwardItem("a", []), "no tokens"),
    (ForwardItem("a", [1, 99999]), "token id out of range"),
    (ForwardItem("a", [1, 2], num_logits=3), "num_logits"),
])
def test_bad_forward_items(runner, item, message):
    with pytest.raises(SpecdError, match=message):
        runner.forward([item])


def test_same_logits_as_transformers(tiny_models):
    transformers = pytest.importorskip("transformers")
    reference = transformers.LlamaForCausalLM.from_pretrained(tiny_models.target).eval()
    tokens = [5, 17, 33, 2, 250, 11, 7]
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    runner = ModelRunner.from_dir(tiny_models.target, placement=TEST_PLACEMENT)
    first = runner.forward([ForwardItem("a", tokens[:4], num_logits=4)])[0]
    rest = runner.forward([ForwardItem("a", tokens[4:], num_logits=3)])[0]
    torch.testing.assert_close(torch.cat([first, rest]).cpu(), expected, rtol=1e-4, atol=1e-4)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_models.target / "tokenizer.json"))
    assert tokenizer.decode(tokenizer.encode("def add(a, b):")) == "def add(a, b):"
