"""Batched draft proposal and batched target verification.

Both sides take the committed token sequence of each request and let the runner work out what
its cache is missing (`ModelRunner.sync`), so a rejected draft token is rolled back simply by
not being part of the next committed sequence. Every request in a batch may ask for its own
speculation length k; k = 0 is plain decoding (one target position, no draft work).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specd.worker.acceptance import Acceptance, accept
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.sampling import SamplingParams, gumbel_choice, probabilities, sample


@dataclass
class DraftRequest:
    request_id: str
    committed: list[int]
    k: int
    params: SamplingParams
    generator: torch.Generator


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
    generator: torch.Generator


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
            for r, row in zip(active, logits):
                if r.params.greedy:
                    token = int(row[-1].argmax())
                else:
                    q = probabilities(row[-1:], r.params)
                    if r.params.seed is not None:  # the noise the target will use at this position
                        token = gumbel_choice(q, r.params.seed, len(r.committed) + step)[0]
                    else:
                        token = int(sample(q, r.generator))
                    probs[r.request_id].append(q[0])
                tokens[r.request_id].append(token)
                feed[r.request_id] = [token]
            step += 1
            # the k-th token is not fed: the next sync feeds it if the target accepts it
            active = [r for r in active if r.k > step]
        return [
            Proposal(tokens[r.request_id], torch.stack(probs[r.request_id]) if probs[r.request_id] else None)
            for r in requests
        ]


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
        results = []
        for r, row in zip(requests, logits):
            result = accept(r.draft_tokens, r.draft_probs, row, r.params, r.generator, len(r.committed))
            # keep only the committed prefix plus the accepted drafts in the target's cache
            self.runner.truncate(r.request_id, len(r.committed) + result.accepted)
            results.append(result)
        return results
