"""`specd bench decode`: speculative vs plain decoding with the same target, prompts and run.

Greedy decoding over held-out prompts at several batch sizes. Plain and speculative passes
alternate for `rounds` rounds so drift in machine load hits both alike; the figures are ratios
taken within one run. Losslessness is measured: the speculative outputs are compared token by
token with plain decoding's.

`acceptance_rate` is α of PAPERS.md §0, the probability that a tested draft token is accepted
(accepted / (accepted + rejected); drafts after a rejection are never tested), which is the α
the theoretical bound takes. `accepted_fraction_of_proposed` counts untested drafts as lost.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from specd.worker.engine import GenerationRequest, RequestStats, SpeculativeEngine
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.tokenizer import Tokenizer


@dataclass(frozen=True)
class DecodeBenchSettings:
    k: int = 4
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    prompts: int = 8
    max_new_tokens: int = 96
    rounds: int = 2


def theoretical_speedup(alpha: float, c: float, k: int) -> float:
    """PAPERS.md §0: (1 - α^(k+1)) / ((1 - α)(c·k + 1))."""
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (c * k + 1)


def step_cost(runner: ModelRunner, context: list[int], repeats: int = 30) -> float:
    """Median seconds of one single-token decoding step at batch 1 after `context`."""
    runner.forward([ForwardItem("cost-probe", context, num_logits=0)])
    times = []
    for _ in range(repeats):
        runner.truncate("cost-probe", len(context))
        started = time.perf_counter()
        runner.forward([ForwardItem("cost-probe", [context[-1]])])
        times.append(time.perf_counter() - started)
    runner.release("cost-probe")
    return statistics.median(times)


def _timed(engine: SpeculativeEngine, prompts: list[list[int]], batch: int, k: int,
           max_new_tokens: int) -> tuple[float, list[list[int]], RequestStats]:
    """Decode all prompts in groups of `batch`; returns seconds, outputs and summed stats."""
    outputs, total = [], RequestStats()
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        group = [GenerationRequest(p, max_new_tokens, k=k, stop_at_eos=False) for p in prompts[i : i + batch]]
        for tokens, stats in engine.generate(group):
            outputs.append(tokens)
            for name in ("steps", "proposed", "accepted", "rejected"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
    return time.perf_counter() - started, outputs, total


def run(target_dir: Path, draft_dir: Path, prompts: list[str], settings: DecodeBenchSettings,
        log=lambda _msg: None) -> dict:
    target, draft = ModelRunner.from_dir(target_dir), ModelRunner.from_dir(draft_dir)
    tokenizer = Tokenizer(target_dir)
    encoded = [tokenizer.encode(p) for p in prompts[: settings.prompts]]
    engine = SpeculativeEngine(target, draft)
    c = step_cost(draft, encoded[0]) / step_cost(target, encoded[0])
    log(f"draft/target step cost ratio c = {c:.3f}")
    per_batch = []
    for batch in settings.batch_sizes:
        plain_s = spec_s = 0.0
        lossless = True
        steps = proposed = accepted = rejected = 0
        for round_ in range(settings.rounds):
            t_plain, plain_out, _ = _timed(engine, encoded, batch, 0, settings.max_new_tokens)
            t_spec, spec_out, stats = _timed(engine, encoded, batch, settings.k, settings.max_new_tokens)
            plain_s, spec_s = plain_s + t_plain, spec_s + t_spec
            lossless &= plain_out == spec_out
            steps, proposed = steps + stats.steps, proposed + stats.proposed
            accepted, rejected = accepted + stats.accepted, rejected + stats.rejected
            log(f"batch {batch} round {round_ + 1}: plain {t_plain:.2f}s, speculative {t_spec:.2f}s")
        tokens = settings.rounds * len(encoded) * settings.max_new_tokens
        alpha = RequestStats(steps, proposed, accepted, rejected).acceptance_rate
        per_batch.append({
            "batch_size": batch,
            "autoregressive_tokens_per_s": round(tokens / plain_s, 2),
            "speculative_tokens_per_s": round(tokens / spec_s, 2),
            "speedup": round(plain_s / spec_s, 3),
            "acceptance_rate": round(alpha, 4),
            "accepted_fraction_of_proposed": round(accepted / proposed, 4),
            "mean_accepted_per_step": round(accepted / steps, 3),
            "tokens_per_step": round(tokens / steps, 3),
            "theoretical_speedup": round(theoretical_speedup(alpha, c, settings.k), 3),
            "lossless": lossless,
        })
    first = per_batch[0]
    return {
        **first,
        "k": settings.k,
        "draft_target_cost_ratio": round(c, 4),
        "speedup_vs_theoretical": round(first["speedup"] / first["theoretical_speedup"], 3),
        "greedy": True,
        "prompts": len(encoded),
        "max_new_tokens": settings.max_new_tokens,
        "rounds": settings.rounds,
        "torch_threads": torch.get_num_threads(),
        "batches": per_batch,
    }
