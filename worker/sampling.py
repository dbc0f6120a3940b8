"""Sampling parameters, the logits -> probabilities transform shared by target and draft, and
the random noise of every draw.

Losslessness needs the draft and the target distributions to go through the exact same
temperature / top-k / top-p transform before the acceptance test, so there is one function
(`row_probabilities`), batched over rows that may each have their own parameters.

Randomness is a counter-based hash of (request seed, position, stream), computed on the
runner's device for a whole batch at once: no generator objects, no per-request draws, and the
same numbers on a CPU and a GPU. Every request has a seed: the user's, or a random one drawn
when it is admitted. A seeded request couples its draws (`Stream.COUPLED`): the token at
position t is argmax(log p_t + G_t), whatever the speculation length that produced it, so a
seed reproduces its output whichever k the router picks (see acceptance.py). An unseeded
request uses the rejection rule, whose draft sample, acceptance test and correction token each
have a stream of their own: independent draws, as the rule needs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import IntEnum

import torch

from specd.errors import SpecdError
from specd.worker.device import to_device


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

    @property
    def coupled(self) -> bool:
        """Seeded sampling: the Gumbel-max coupling of draft and target (reproducible under any k)."""
        return self.seed is not None and not self.greedy

    def noise_seed(self) -> int:
        """The seed of this request's noise: the user's, or a fresh random one."""
        return self.seed if self.seed is not None else secrets.randbits(62)


class Stream(IntEnum):
    """What a random draw is for; each stream's numbers are independent of the others'."""

    COUPLED = 0  # seeded requests: one Gumbel noise per position, shared by every level of drafting and the target
    DRAFT = 1  # unseeded: the draft's sample
    ACCEPT = 2  # unseeded: the uniform of the acceptance test
    RESIDUAL = 3  # unseeded: the correction or bonus token
    TENTATIVE_ACCEPT = 4  # unseeded, HiSpec: the intermediate verifier's acceptance test
    TENTATIVE_RESIDUAL = 5  # unseeded, HiSpec: the intermediate verifier's correction token


@dataclass(frozen=True)
class Rows:
    """Per-row sampling parameters of a batch of logit rows, on the device (one row per drafted
    or verified position of a request). The host-side facts steer which kernels run without
    reading anything back from the device."""

    temperature: torch.Tensor  # [n] float32
    top_p: torch.Tensor  # [n] float32
    top_k: torch.Tensor  # [n] int64, 0 = none
    seed: torch.Tensor  # [n] int64
    position: torch.Tensor  # [n] int64: the sequence position the row predicts
    coupled: torch.Tensor  # [n] bool
    max_top_k: int
    any_top_p: bool

    @classmethod
    def build(cls, params: list[SamplingParams], seeds: list[int], positions: list[int], counts: list[int],
              device: torch.device) -> "Rows":
        """Request i contributes counts[i] rows predicting positions[i], positions[i] + 1, ...
        Greedy requests must not be among them (they take the argmax)."""
        assert not any(p.greedy for p in params), "greedy rows take the argmax"
        floats, ints = [], []
        for p, seed, position, n in zip(params, seeds, positions, counts):
            for j in range(n):
                floats.append((p.temperature, p.top_p))
                ints.append((p.top_k, seed, position + j, p.coupled))
        f = to_device(floats, torch.float32, device).reshape(-1, 2)
        i = to_device(ints, torch.int64, device).reshape(-1, 4)
        return cls(f[:, 0], f[:, 1], i[:, 0], i[:, 1], i[:, 2], i[:, 3].bool(),
                   max((p.top_k for p in params), default=0), any(p.top_p < 1.0 for p in params))


def row_probabilities(logits: torch.Tensor, rows: Rows) -> torch.Tensor:
    """[n, vocab] logits -> [n, vocab] probabilities after each row's temperature, top-k and top-p."""
    scaled = logits.float() / rows.temperature.unsqueeze(1)
    vocab = scaled.shape[-1]
    if 0 < rows.max_top_k:
        top = torch.topk(scaled, min(rows.max_top_k, vocab), dim=-1).values
        kth = top.gather(1, (rows.top_k.clamp(1, top.shape[-1]) - 1).unsqueeze(1))
        kth = kth.masked_fill((rows.top_k == 0).unsqueeze(1), float("-inf"))  # no filter on that row
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if rows.any_top_p:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= rows.top_p.unsqueeze(1)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled.softmax(-1)


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[n, vocab] logits of one request -> [n, vocab] probabilities (`row_probabilities` with its
    parameters on every row)."""
    if params.greedy:
        raise ValueError("greedy decoding uses argmax, not probabilities")
    return row_probabilities(logits, Rows.build([params], [0], [0], [len(logits)], logits.device))


# --- noise: splitmix64 on int64 tensors (wrapping multiplication, logical shifts by masking) ----

def _signed(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def uniform(seed: torch.Tensor, position: torch.Tensor, stream: torch.Tensor | int, width: int) -> torch.Tensor:
    """[n] seeds, positions and streams -> [n, width] uniform numbers in (0, 1), a pure function
    of (seed, position, stream, column): the same on every device and in every batch."""
    key = _mix(seed * _GOLDEN + _mix(position * _MIX1 + stream))
    columns = torch.arange(1, width + 1, dtype=torch.int64, device=seed.device) * _GOLDEN
    bits = _mix(key.unsqueeze(1) + columns)
    return (_shift_right(bits, 41).float() + 0.5) * 2.0**-23  # 23 random bits: exact in float32, never 0 or 1


def gumbel(seed: torch.Tensor, position: torch.Tensor, stream: torch.Tensor | int, width: int) -> torch.Tensor:
    """[n, width] Gumbel(0, 1) noise keyed like `uniform`."""
    return -(-uniform(seed, position, stream, width).log()).log()


def choose(probs: torch.Tensor, seed: torch.Tensor, position: torch.Tensor, stream: torch.Tensor | int) -> torch.Tensor:
    """Row i of [n, vocab] probabilities -> its token [n] by Gumbel-max: an exact sample of the row,
    and the same token for the same (seed, position, stream)."""
    return (probs.log() + gumbel(seed, position, stream, probs.shape[-1])).argmax(-1)


def draft_stream(rows: Rows) -> torch.Tensor:
    """[n]: the stream a draft samples from: the coupled noise of seeded rows, else its own."""
    return torch.where(rows.coupled, int(Stream.COUPLED), int(Stream.DRAFT))
