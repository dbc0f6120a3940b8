"""The peers a Python user would pick instead of specd: Hugging Face transformers' `generate` on
the same checkpoints, greedy, one sequence at a time (its assisted generation takes batch 1
only). Settings as PAPERS.md's peers: plain, assisted generation with the draft model (a
constant 4 tokens), prompt lookup (4 tokens) and LayerSkip-style `assistant_early_exit` (the
target's first layers as its own draft)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

PEERS: dict[str, dict[str, object]] = {
    "hf-plain": {},
    "hf-assisted": {"assistant_model": None},  # the draft model, drafting a constant 4 tokens (below)
    "hf-prompt-lookup": {"prompt_lookup_num_tokens": 4},
    "hf-early-exit": {"assistant_early_exit": 4},
}
# tokens drafted per step (transformers' own schedule for the early exit: None)
PEER_K: dict[str, int | None] = {"hf-plain": 0, "hf-assisted": 4, "hf-prompt-lookup": 4, "hf-early-exit": None}
# the specd method each peer setting is compared with
COUNTERPART = {"hf-plain": "plain", "hf-assisted": "model", "hf-prompt-lookup": "ngram", "hf-early-exit": "early-exit"}


def unavailable_reason() -> str | None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (pip install 'specd[test]')"
    return None


def load_peers(target_dir: Path, draft_dir: Path) -> dict[str, Callable[[list[int], int], tuple[list[int], int]]]:
    """name -> generate(prompt, max_new_tokens) -> (tokens, target forward passes)."""
    from transformers import AutoModelForCausalLM, logging

    logging.set_verbosity_error()
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
    for model in (target, draft):  # decode through end-of-text like specd's benchmark does
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = target.config.eos_token_id
    # transformers reads the draft length from the assistant's own generation config (generate's
    # keyword arguments do not reach it: the default is up to 20 tokens on a heuristic schedule)
    draft.generation_config.num_assistant_tokens = 4
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0

    def peer(settings: dict[str, object]) -> Callable[[list[int], int], tuple[list[int], int]]:
        extra = dict(settings, assistant_model=draft) if "assistant_model" in settings else settings

        def generate(prompt: list[int], max_new_tokens: int) -> tuple[list[int], int]:
            ids = torch.tensor([prompt])
            passes = _count_forwards(target)
            with torch.inference_mode():
                out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, **extra)
            return out[0, len(prompt):].tolist(), passes.stop()

        return generate

    return {name: peer(settings) for name, settings in PEERS.items()}


class _count_forwards:
    """Counts full forward passes of the target (verification steps) while a generation runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.count += 1

    def stop(self) -> int:
        self.handle.remove()
        return self.count


def timed(generate: Callable[[list[int], int], tuple[list[int], int]], prompts: list[list[int]],
          max_new_tokens: int) -> tuple[float, list[list[int]], int]:
    """Seconds, outputs and target passes for all prompts, one at a time."""
    outputs, passes = [], 0
    started = time.perf_counter()
    for prompt in prompts:
        tokens, n = generate(prompt, max_new_tokens)
        outputs.append(tokens)
        passes += n
    return time.perf_counter() - started, outputs, passes
