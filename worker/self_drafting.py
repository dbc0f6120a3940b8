"""Drafting inside the target worker: no draft model, no second cache, no network hop.

- `NgramProposer` (prompt lookup): the tokens that followed the latest earlier occurrence of the
  sequence's last n tokens.
- `EarlyExitProposer` (Kangaroo, PAPERS.md §3): the target's first ℓ layers plus the trained
  adapter and the target's LM head; drafting stops at k tokens or when the draft's top-token
  probability falls below η (the second early exit). The shallow layers' KV and the states at
  the exit stay in the target's cache, so verification runs layers ℓ..L only.
- `HierarchicalProposer` (HiSpec, §4): drafts from a shallow exit, accepts tentatively against an
  intermediate exit with the same lossless rule, and hands the full model m = k tentative tokens,
  each with the intermediate distribution it is an exact sample of, to validate in one pass.

All three feed the same `Verifier`, so their outputs are exactly the target's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specd.worker.acceptance import accept_batch
from specd.worker.device import to_device
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.sampling import probabilities
from specd.worker.speculation import DraftRequest, Proposal, draw, stack_probs

DEFAULT_CONFIDENCE = 0.6  # Kangaroo's η
DEFAULT_NGRAM = (1, 3)  # n-gram sizes tried, longest first
DEFAULT_INNER_K = 4  # HiSpec: drafts per intermediate verification


class NgramProposer:
    """Prompt lookup: no model; q is one-hot on the proposed token when sampling (still lossless:
    the target accepts it with probability p(x) and otherwise samples p without x)."""

    runner = None

    def __init__(self, vocab_size: int, device: torch.device, sizes: tuple[int, int] = DEFAULT_NGRAM) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.min_n, self.max_n = sizes

    def lookup(self, sequence: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest matching suffix."""
        for n in range(min(self.max_n, len(sequence) - 1), self.min_n - 1, -1):
            suffix = sequence[-n:]
            for start in range(len(sequence) - n - 1, -1, -1):
                if sequence[start : start + n] == suffix:
                    return sequence[start + n : start + n + k]
        return []

    def propose(self, requests: list[DraftRequest]) -> list[Proposal]:
        proposals = []
        for r in requests:
            tokens = self.lookup(r.committed, r.k) if r.k > 0 else []
            probs = None
            if tokens and not r.params.greedy:
                index = to_device(tokens, torch.int64, self.device).unsqueeze(1)
                probs = torch.zeros(len(tokens), self.vocab_size, device=self.device).scatter_(1, index, 1.0)
            proposals.append(Proposal(tokens, probs))
        return proposals


@dataclass
class _Drafting:
    request: DraftRequest
    sequence: list[int]  # committed tokens, then what this request has drafted so far
    limit: int  # tokens to draft at most
    feed: list[int]  # what the next pass feeds: the cache's missing tokens, then each new draft
    tokens: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)


def draft_from_exit(runner: ModelRunner, requests: list[DraftRequest], sequences: list[list[int]],
                    limits: list[int], depth: int, confidence: float) -> list[_Drafting]:
    """Draft up to limits[i] tokens after sequences[i] from the exit at `depth` (the adapter's
    when the runner has one there), stopping a request early when its draft's top-token
    probability falls below `confidence`. The exit's KV and states stay in the runner's cache."""
    states = [_Drafting(r, list(seq), limit, runner.sync(r.request_id, seq, depth) if limit > 0 else [])
              for r, seq, limit in zip(requests, sequences, limits)]
    active = [s for s in states if s.limit > 0]
    while active:
        logits = runner.forward([ForwardItem(s.request.request_id, s.feed, depth=depth) for s in active])
        last = torch.cat([row[-1:] for row in logits])  # [active, vocab]
        drawn, q = draw(last, [s.request for s in active], [len(s.sequence) for s in active])
        tops = torch.stack([q_row if q_row is not None else row.softmax(-1) for q_row, row in zip(q, last)]).amax(-1)
        # one read-back per pass: the tokens and their top probabilities (float64 holds token ids exactly)
        drawn_host, tops_host = torch.stack([drawn.double(), tops.double()]).tolist()
        still = []
        for s, token, top, q_row in zip(active, map(int, drawn_host), tops_host, q):
            if top < confidence:
                continue  # the second early exit: this draft is too unsure to be worth verifying
            s.tokens.append(token)
            s.sequence.append(token)
            if q_row is not None:
                s.probs.append(q_row)
            s.feed = [token]
            if len(s.tokens) < s.limit:
                still.append(s)
        active = still
    return states


class EarlyExitProposer:
    """Kangaroo: the self-draft is the target's runner stopped at the adapter's exit."""

    runner = None  # drafting shares the target's runner and cache

    def __init__(self, target: ModelRunner, confidence: float = DEFAULT_CONFIDENCE) -> None:
        if target.adapter is None:
            raise ValueError("early-exit drafting needs a target runner with its Kangaroo adapter")
        self.target = target
        self.depth = target.adapter.exit_layer
        self.confidence = confidence

    def propose(self, requests: list[DraftRequest]) -> list[Proposal]:
        drafted = draft_from_exit(self.target, requests, [r.committed for r in requests], [r.k for r in requests],
                                  self.depth, self.confidence)
        return [Proposal(d.tokens, stack_probs(d.probs)) for d in drafted]


class HierarchicalProposer:
    """HiSpec: drafts from `draft_exit`, tentative acceptance at `verify_exit`, k tentative tokens
    per full-model validation."""

    runner = None

    def __init__(self, target: ModelRunner, draft_exit: int, verify_exit: int,
                 inner_k: int = DEFAULT_INNER_K, confidence: float = DEFAULT_CONFIDENCE) -> None:
        if not 0 < draft_exit < verify_exit < target.num_layers:
            raise ValueError(f"exits must satisfy 0 < draft {draft_exit} < verify {verify_exit} < {target.num_layers}")
        self.target = target
        self.draft_exit, self.verify_exit = draft_exit, verify_exit
        self.inner_k = inner_k
        self.confidence = confidence

    def propose(self, requests: list[DraftRequest]) -> list[Proposal]:
        # tokens, and the intermediate distribution each is a sample of
        tentative: dict[str, tuple[list[int], list[torch.Tensor]]] = {r.request_id: ([], []) for r in requests}
        active = [r for r in requests if r.k > 0]
        while active:
            sequences = [r.committed + tentative[r.request_id][0] for r in active]
            # leave room for the intermediate verifier's own token
            limits = [min(self.inner_k, r.k - len(tentative[r.request_id][0]) - 1) for r in active]
            drafted = draft_from_exit(self.target, active, sequences, limits, self.draft_exit, self.confidence)
            items = []
            for d, seq in zip(drafted, sequences):
                pending = self.target.sync(d.request.request_id, seq, self.verify_exit)
                items.append(ForwardItem(d.request.request_id, pending + d.tokens, num_logits=len(d.tokens) + 1,
                                         depth=self.verify_exit))
            logits = self.target.forward(items)
            results = accept_batch([d.tokens for d in drafted], [stack_probs(d.probs) for d in drafted], logits,
                                   [r.params for r in active], [r.seed for r in active],
                                   [len(seq) for seq in sequences], tentative=True)
            still = []
            for r, result, row in zip(active, results, logits):
                tokens, probs = tentative[r.request_id]
                tokens.extend(result.tokens)
                if not r.params.greedy:  # each tentative token is an exact sample of its intermediate row
                    probs.extend(probabilities(row[: len(result.tokens)], r.params))
                if len(tokens) < r.k:
                    still.append(r)
            active = still
        return [Proposal(tentative[r.request_id][0][: r.k],
                         stack_probs(tentative[r.request_id][1][: r.k])) for r in requests]
