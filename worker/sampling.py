"""Sampling parameters and the logits -> probabilities transform shared by target and draft.

Losslessness needs the draft and the target distributions to go through the exact same
temperature / top-k / top-p transform before the acceptance test, so there is one function.

A seeded request samples by the Gumbel-max trick with noise keyed by (seed, position): the
token at position t is argmax(log p_t + G_t), whatever the speculation length that produced it,
so a seed reproduces its output whichever k the router picks (see acceptance.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specd.errors import SpecdError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise SpecdError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SpecdError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SpecdError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        """The random stream of an unseeded request. Seeded requests draw no stream: their noise
        is keyed by seed and position (`gumbel_noise`), the same on the draft and the target."""
        gen = torch.Generator()
        gen.seed()
        return gen


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[n, vocab] logits -> [n, vocab] probabilities after temperature, top-k and top-p."""
    if params.greedy:
        raise ValueError("greedy decoding uses argmax, not probabilities")
    scaled = logits.float() / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled.softmax(-1)


def gumbel_noise(seed: int, position: int, vocab: int) -> torch.Tensor:
    """[vocab] Gumbel(0, 1) noise of one position of a seeded request; the draft and the target
    derive the same noise, which couples their choices (that is the point)."""
    gen = torch.Generator()
    gen.manual_seed((seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9) % 2**63)
    uniform = torch.rand(vocab, generator=gen).clamp_min(torch.finfo(torch.float32).tiny)
    return -(-uniform.log()).log()


def gumbel_choice(probs: torch.Tensor, seed: int, first_position: int) -> list[int]:
    """Row i of [n, vocab] probabilities -> its token under the noise of position first_position + i:
    an exact sample of that row (Gumbel-max), and the same token for the same (seed, position)."""
    noise = torch.stack([gumbel_noise(seed, first_position + i, probs.shape[-1]) for i in range(len(probs))])
    return (probs.log() + noise).argmax(-1).tolist()


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of [n, vocab] probabilities."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
