"""Simulated requests: arrival times, prompt and output lengths, and each request's true
acceptance rate (the probability that one drafted token is accepted), per kind of workload.

Output lengths are heavy-tailed, as in public traces; a request ends at its true length (its
end-of-text token), below the `max_new_tokens` cap its client set, so the router sees only the
cap, as it does in production. The shapes are log-normal fits to published summary figures:
- chat: ShareGPT conversations, mean prompt 161 and mean output 338 tokens (Kwon et al. 2023,
  vLLM, section 6.1), a long tail (sigma 1.0).
- code: HumanEval/MBPP-style completions: short prompts and outputs of a few hundred tokens with a
  lighter tail; drafts are accepted more often on code (repetitive syntax).
- reasoning: long chains of thought (mean output ~1,600 tokens, tail to the 8k cap).
Acceptance is a Beta distribution per kind; its means (chat 0.6, code 0.8, reasoning 0.7) are in
the range published for small same-family drafts (SmartSpec, Spec-Bench); they are assumptions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LogNormal:
    median: float
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        return int(min(self.high, max(self.low, round(rng.lognormvariate(math.log(self.median), self.sigma)))))

    @property
    def mean(self) -> float:  # of the unclipped distribution
        return self.median * math.exp(self.sigma ** 2 / 2)


@dataclass(frozen=True)
class Kind:
    name: str
    prompt: LogNormal
    output: LogNormal
    cap: int  # max_new_tokens the client sets
    acceptance: tuple[float, float]  # Beta(a, b)


KINDS = {
    "chat": Kind("chat", LogNormal(100, 1.0, 4, 2048), LogNormal(205, 1.0, 4, 2048), 2048, (6.0, 4.0)),
    "code": Kind("code", LogNormal(150, 0.6, 16, 1024), LogNormal(150, 0.6, 16, 1024), 1024, (8.0, 2.0)),
    "reasoning": Kind("reasoning", LogNormal(120, 0.8, 8, 2048), LogNormal(1200, 0.8, 64, 8192), 8192,
                      (7.0, 3.0)),
}
# the paper-like mixture (LAPS-SD evaluates chatbot instructions, MBPP code and a reasoning set)
MIXES = {
    "paper": {"chat": 0.5, "code": 0.3, "reasoning": 0.2},
    "chat": {"chat": 1.0},
    "code": {"code": 1.0},
    "reasoning": {"reasoning": 1.0},
}


# `specd bench autoscale`'s load, (seconds, share of the peak rate): up in steps, a peak, down in
# steps; six minutes, so that the five runs of a default benchmark fit ten minutes on two cores
RISE_AND_FALL: tuple[tuple[float, float], ...] = ((60, 0.2), (60, 0.5), (120, 1.0), (60, 0.5), (60, 0.2))
# the router batch of served large models, as `specd bench autoscale` runs them: vLLM's max_num_seqs
# default of its V0 engine (newer engines pick per device, not less on 80 GB GPUs); the resource's
# 32 keeps a 70B verify pass weight-streaming-bound
SERVED_BATCH_SIZE = 256


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds
    kind: str
    prompt_tokens: int
    max_new_tokens: int
    output_tokens: int  # its true length (<= max_new_tokens)
    acceptance: float


@dataclass(frozen=True)
class Workload:
    """A mixture of kinds; `arrivals` replays the same requests at any rate (the gaps scale)."""

    mix: dict[str, float]
    requests: int
    seed: int = 0

    def arrivals(self, rate: float) -> list[Arrival]:
        rng = random.Random(self.seed)
        kinds, weights = list(self.mix), list(self.mix.values())
        t, out = 0.0, []
        for _ in range(self.requests):
            t += rng.expovariate(1.0)  # unit-rate Poisson gaps, scaled below
            kind = KINDS[rng.choices(kinds, weights)[0]]
            output = min(kind.output.draw(rng), kind.cap)
            out.append(Arrival(t, kind.name, kind.prompt.draw(rng), kind.cap, output,
                               rng.betavariate(*kind.acceptance)))
        return [Arrival(a.at / rate, a.kind, a.prompt_tokens, a.max_new_tokens, a.output_tokens, a.acceptance)
                for a in out]

    def mean_output_tokens(self) -> float:
        return sum(w * min(KINDS[k].output.mean, KINDS[k].cap) for k, w in self.mix.items()) / sum(self.mix.values())
