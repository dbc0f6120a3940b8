"""The demo models: the training script works from nothing, the committed checkpoints are what
the docs say, and speculative decoding with them is real (high acceptance, lossless)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from specd.demo import corpus
from specd.demo.paths import demo_model_dirs
from specd.demo.train import TrainSettings, train
from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.runner import ModelRunner
from specd.worker.tokenizer import Tokenizer


def test_training_script_writes_loadable_models(tmp_path):
    settings = TrainSettings(steps=3, distill_steps=2, batch_size=2, seq_len=32,
                             tokenizer_chars=100_000, train_chars=200_000, on_policy_sequences=4,
                             on_policy_new_tokens=8, on_policy_steps=2, on_policy_batch=2)
    target_dir, draft_dir = train(tmp_path, settings, log=lambda _: None)
    target, draft = ModelRunner.from_dir(target_dir), ModelRunner.from_dir(draft_dir)
    assert target.config.vocab_size == draft.config.vocab_size == Tokenizer(target_dir).vocab_size
    assert (target_dir / "tokenizer.json").read_bytes() == (draft_dir / "tokenizer.json").read_bytes()
    assert json.loads((tmp_path / "training.json").read_text())["settings"]["steps"] == 3


def test_held_out_split_is_disjoint():
    train_files = set(corpus.source_files(held_out=False))
    held_out = set(corpus.source_files(held_out=True))
    assert held_out and train_files and not train_files & held_out


def test_committed_models_decode_losslessly_with_real_acceptance():
    target_dir, draft_dir = demo_model_dirs()
    target, draft = ModelRunner.from_dir(target_dir), ModelRunner.from_dir(draft_dir)
    n_target = sum(p.numel() for p in target.model.parameters())
    n_draft = sum(p.numel() for p in draft.model.parameters())
    assert 5e6 < n_target < 30e6 and 1e6 < n_draft < 3e6
    tokenizer = Tokenizer(target_dir)
    prompts = [tokenizer.encode(p) for p in corpus.held_out_prompts(3)]
    engine = SpeculativeEngine(target, draft)
    plain = engine.generate([GenerationRequest(p, 40, k=0, stop_at_eos=False) for p in prompts])
    spec = engine.generate([GenerationRequest(p, 40, k=4, stop_at_eos=False) for p in prompts])
    assert [t for t, _ in spec] == [t for t, _ in plain]
    accepted = sum(s.accepted for _, s in spec)
    tested = accepted + sum(s.rejected for _, s in spec)
    assert accepted / tested > 0.6, f"acceptance α {accepted / tested:.2f} on held-out prompts"


def test_committed_target_exits_early_with_real_acceptance():
    """The early-exit methods on the committed target: exact, and their drafts mostly accepted."""
    from specd.worker.methods import make_proposer, needs_adapter

    target_dir, _ = demo_model_dirs()
    tokenizer = Tokenizer(target_dir)
    prompts = [tokenizer.encode(p) for p in corpus.held_out_prompts(3)]
    plain = SpeculativeEngine(ModelRunner.from_dir(target_dir))
    expected = [t for t, _ in plain.generate([GenerationRequest(p, 40, k=0, stop_at_eos=False) for p in prompts])]
    for method, k in (("early-exit", 6), ("hierarchical", 8)):
        target = ModelRunner.from_dir(target_dir, with_adapter=needs_adapter(method))
        engine = SpeculativeEngine(target, proposer=make_proposer(method, target, target_dir))
        spec = engine.generate([GenerationRequest(p, 40, k=k, stop_at_eos=False) for p in prompts])
        assert [t for t, _ in spec] == expected, method
        accepted = sum(s.accepted for _, s in spec)
        tested = accepted + sum(s.rejected for _, s in spec)
        assert accepted / tested > 0.5, f"{method}: acceptance α {accepted / tested:.2f}"


def test_bench_decode_prints_the_promised_json():
    result = subprocess.run(
        [sys.executable, "-m", "specd.cli", "bench", "decode", "--json", "--batch-sizes", "1,2",
         "--prompts", "2", "--max-new-tokens", "16", "--rounds", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for key in ("autoregressive_tokens_per_s", "speculative_tokens_per_s", "speedup", "acceptance_rate",
                "mean_accepted_per_step", "k", "theoretical_speedup", "lossless"):
        assert key in report, key
    assert report["lossless"] is True
    assert report["speedup"] == pytest.approx(
        report["speculative_tokens_per_s"] / report["autoregressive_tokens_per_s"], rel=0.01)
    assert [b["batch_size"] for b in report["batches"]] == [1, 2]
