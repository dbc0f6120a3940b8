"""Batched draft proposal and batched target verification.

Every drafting method is a `Proposer`: the separate draft model here, the target's own early exits
and n-gram lookup in `self_drafting.py`. The verifier is the same for all of them.

Both sides take the committed token sequence of each request and let the runner work out what
its cache is missing (`ModelRunner.sync`), so a rejected draft token is rolled back simply by
not being part of the next committed sequence. Every request in a batch may ask for its own
speculation length k; k = 0 is plain decoding (one target position, no draft work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specd.worker.acceptance import Acceptance, accept_batch
from specd.worker.device import to_device
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.sampling import Rows, SamplingParams, choose, draft_stream, row_probabilities


@dataclass
class DraftRequest:
    request_id: str
    committed: list[int]
    k: int
    params: SamplingParams
    seed: int  # of the request's noise (SamplingParams.noise_seed)


@dataclass(frozen=True)
class Proposal:
    tokens: list[int]
    probs: torch.Tensor | None  # [k, vocab] draft distributions (None when greedy)


@dataclass
class VerifyRequest:
    request_id: str
    committed: list[int]
    draft_tokens: list[int]
    draft_probs: torch.Tensor | None
    params: SamplingParams
    seed: int


class Proposer(Protocol):
    """Drafts up to k tokens per request (fewer when the method stops early), with the distribution
    each was drawn from when sampling: the verifier needs q for the lossless acceptance rule."""

    @property
    def runner(self) -> ModelRunner | None:
        """A separate model's runner, whose caches the engine prefills and frees (None: none)."""

    def propose(self, requests: list[DraftRequest]) -> list[Proposal]: ...


def draw(logits: torch.Tensor, requests: list[DraftRequest],
         positions: list[int]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """One drafted token per row of [n, vocab] logits (request i at sequence position positions[i])
    -> ([n] tokens on the device, q of each row, None when greedy), batched: no read-back here."""
    tokens = logits.argmax(-1)
    q: list[torch.Tensor | None] = [None] * len(requests)
    sampled = [i for i, r in enumerate(requests) if not r.params.greedy]
    if sampled:
        rows = Rows.build([requests[i].params for i in sampled], [requests[i].seed for i in sampled],
                          [positions[i] for i in sampled], [1] * len(sampled), logits.device)
        at = to_device(sampled, torch.int64, logits.device)
        probs = row_probabilities(logits[at], rows)
        tokens[at] = choose(probs, rows.seed, rows.position, draft_stream(rows))
        for i, row in zip(sampled, probs):
            q[i] = row
    return tokens, q


def stack_probs(rows: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(rows) if rows else None


class DraftProposer:
    """Proposes k tokens per request with a separate draft model, keeping q for each position."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def propose(self, requests: list[DraftRequest]) -> list[Proposal]:
        tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
        probs: dict[str, list[torch.Tensor]] = {r.request_id: [] for r in requests}
        active = [r for r in requests if r.k > 0]
        feed = {r.request_id: self.runner.sync(r.request_id, r.committed) for r in active}
        step = 0
        while active:
            logits = self.runner.forward([ForwardItem(r.request_id, feed[r.request_id]) for r in active])
            drawn, q = draw(torch.cat([row[-1:] for row in logits]), active,
                            [len(r.committed) + step for r in active])
            for r, token, q_row in zip(active, drawn.tolist(), q):  # one read-back per pass
                if q_row is not None:
                    probs[r.request_id].append(q_row)
                tokens[r.request_id].append(token)
                feed[r.request_id] = [token]
            step += 1
            # the k-th token is not fed: the next sync feeds it if the target accepts it
            active = [r for r in active if r.k > step]
        return [Proposal(tokens[r.request_id], stack_probs(probs[r.request_id])) for r in requests]


class Verifier:
    """Scores every request's drafts in one target pass over k+1 positions and accepts losslessly."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def verify(self, requests: list[VerifyRequest]) -> list[Acceptance]:
        items = []
        for r in requests:
            pending = self.runner.sync(r.request_id, r.committed)
            items.append(ForwardItem(r.request_id, pending + r.draft_tokens, num_logits=len(r.draft_tokens) + 1))
        logits = self.runner.forward(items)
        results = accept_batch([r.draft_tokens for r in requests], [r.draft_probs for r in requests], logits,
                               [r.params for r in requests], [r.seed for r in requests],
                               [len(r.committed) for r in requests])
        for r, result in zip(requests, results):
            # keep only the committed prefix plus the accepted drafts in the target's cache
            self.runner.truncate(r.request_id, len(r.committed) + result.accepted)
        return results
