"""The router's view of one generation request while it lives."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice

from specd.proto.v1 import common_pb2

ACCEPTANCE_DECAY = 0.85  # SmartSpec's EMA: estimate <- 0.85 * estimate + 0.15 * observation


@dataclass
class AcceptanceEstimate:
    """Token-level acceptance estimate: EMAs of accepted drafts and of trials (accepted + rejections).

    An iteration that accepts n of k drafts observed n successes and, when n < k, one failure:
    the estimate is the maximum-likelihood α of that truncated geometric, smoothed over iterations.
    A request's estimate starts from the global one as one pseudo-trial (`seeded`), whose weight
    fades like any observation: one unlucky first iteration does not switch its speculation off.
    """

    prior: float = 0.7
    accepted: float = 0.0
    trials: float = 0.0

    @property
    def value(self) -> float:
        return self.accepted / self.trials if self.trials > 0 else self.prior

    @classmethod
    def seeded(cls, alpha: float) -> "AcceptanceEstimate":
        return cls(prior=alpha, accepted=alpha, trials=1.0)

    def observe(self, accepted: int, k: int, decay: float = ACCEPTANCE_DECAY) -> None:
        if k <= 0:
            return
        self.accepted = decay * self.accepted + (1 - decay) * accepted
        self.trials = decay * self.trials + (1 - decay) * (accepted + (accepted < k))


@dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    max_new_tokens: int
    sampling: common_pb2.SamplingParams
    max_k: int  # this request's cap on speculation (0: never speculate)
    stop_token: int | None  # end-of-text token, None when ignored
    predicted_length: float  # output tokens, from the length predictor (at admission, then after each iteration)
    arrival: float = field(default_factory=time.monotonic)
    committed: list[int] = field(default_factory=list)
    target: str | None = None  # pinned replicas (their KV caches hold this request)
    draft: str | None = None
    sent: dict[str, int] = field(default_factory=dict)  # worker address -> committed tokens it holds
    # progress
    iterations: int = 0
    proposed: int = 0
    accepted: int = 0
    last_k: int = 0
    acceptance: AcceptanceEstimate = field(default_factory=AcceptanceEstimate)
    acceptance_history: deque = field(default_factory=lambda: deque(maxlen=16))
    first_scheduled: float | None = None
    first_token: float | None = None
    finished_at: float | None = None
    finish_reason: int = 0
    in_flight: bool = False
    cancelled: bool = False
    # the stream: lists of new tokens, then None at the end (or an exception)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        if not self.committed:
            self.committed = list(self.prompt)

    @property
    def generated(self) -> int:
        return len(self.committed) - len(self.prompt)

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - self.generated

    @property
    def done(self) -> bool:
        return self.finished_at is not None or self.cancelled

    def is_stable(self, window: int, threshold: float) -> bool:
        """The acceptance estimate moved less than `threshold` over the last `window` iterations."""
        history = self.acceptance_history
        if len(history) <= window:
            return False
        recent = list(islice(history, len(history) - window - 1, None))
        return max(recent) - min(recent) < threshold
