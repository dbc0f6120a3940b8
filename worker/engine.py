"""The local speculative decoding engine: continuous batching of requests over one target and
an optional proposer (a draft model, or a method that drafts inside the target), with a
speculation length per request.

This is what `specd generate` and `specd bench decode` drive in-process; the serving plane runs
the same proposer and verifier behind gRPC with the router choosing k each step.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from specd.commit_rule import cut, draft_cap
from specd.contract import MAX_K
from specd.errors import SpecdError
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.sampling import SamplingParams
from specd.worker.specee import SpecEEDecoder
from specd.worker.speculation import DraftProposer, DraftRequest, Proposer, Verifier, VerifyRequest


@dataclass
class GenerationRequest:
    prompt: list[int]
    max_new_tokens: int = 64
    params: SamplingParams = field(default_factory=SamplingParams)
    k: int = 4  # speculation length; 0 = plain decoding
    stop_at_eos: bool = True
    request_id: str = ""


@dataclass
class RequestStats:
    steps: int = 0  # target passes
    proposed: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    rejected: int = 0  # draft tokens rejected (at most one per step: the rest are never tested)

    @property
    def acceptance_rate(self) -> float:
        """α of PAPERS.md §0: the probability that a tested draft token is accepted."""
        tested = self.accepted + self.rejected
        return self.accepted / tested if tested else 0.0


@dataclass
class _Active:
    request: GenerationRequest
    committed: list[int]
    seed: int  # of the request's noise
    generated: list[int] = field(default_factory=list)
    stats: RequestStats = field(default_factory=RequestStats)
    finished: bool = False


@dataclass(frozen=True)
class StepOutput:
    request_id: str
    new_tokens: list[int]
    finished: bool
    stats: RequestStats


class SpeculativeEngine:
    """draft: a separate draft model; or proposer: any drafting method (see self_drafting.py);
    or exit_decoder: SpecEE (approximate), which decodes greedy requests one token per step."""

    def __init__(self, target: ModelRunner, draft: ModelRunner | None = None, proposer: Proposer | None = None,
                 exit_decoder: SpecEEDecoder | None = None) -> None:
        if draft is not None and proposer is not None:
            raise SpecdError("give a draft model or a proposer, not both")
        if draft is not None and draft.config.vocab_size != target.config.vocab_size:
            raise SpecdError(
                f"draft vocabulary ({draft.config.vocab_size}) differs from the target's ({target.config.vocab_size})"
            )
        self.target = target
        self.verifier = Verifier(target)
        self.proposer = DraftProposer(draft) if draft is not None else proposer
        self.draft = self.proposer.runner if self.proposer is not None else None  # a separate model's runner
        self.exit_decoder = exit_decoder
        self.eos_token_id = target.config.eos_token_id
        self._active: dict[str, _Active] = {}
        self._ids = itertools.count()

    def validate(self, request: GenerationRequest) -> None:
        if not request.prompt:
            raise SpecdError("prompt is empty")
        if request.max_new_tokens < 1:
            raise SpecdError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
        if not 0 <= request.k <= MAX_K:
            raise SpecdError(f"k must be between 0 and {MAX_K}, got {request.k}")
        if request.k > 0 and self.proposer is None:
            raise SpecdError("speculation (k > 0) needs a drafting method; use k = 0 for plain decoding")
        limit = self.target.max_context
        if len(request.prompt) + request.max_new_tokens > limit:
            raise SpecdError(
                f"prompt ({len(request.prompt)} tokens) + max_new_tokens ({request.max_new_tokens}) "
                f"exceeds the model's context of {limit} tokens"
            )

    def add(self, request: GenerationRequest) -> str:
        self.validate(request)
        request_id = request.request_id or f"req-{next(self._ids)}"
        if request_id in self._active:
            raise SpecdError(f"request id {request_id!r} is already active")
        self._active[request_id] = _Active(request, list(request.prompt), request.params.noise_seed())
        return request_id

    def prefill(self) -> None:
        """Fill the target's and draft's caches with every new prompt but its last token."""
        for runner in filter(None, (self.target, self.draft)):
            items = []
            for rid, state in self._active.items():
                if runner.cached_tokens(rid) or len(state.committed) < 2:
                    continue
                items.append(ForwardItem(rid, runner.sync(rid, state.committed), num_logits=0))
            if items:
                runner.forward(items)

    def step(self) -> list[StepOutput]:
        """One iteration over every active request: draft k tokens, verify, commit."""
        states = list(self._active.items())
        if not states:
            return []
        outputs = []
        if self.exit_decoder is not None:  # SpecEE decodes the greedy requests; sampled ones stay exact
            early = [(rid, s) for rid, s in states if s.request.params.greedy]
            tokens = self.exit_decoder.step([(rid, s.committed) for rid, s in early]) if early else []
            for (rid, state), token in zip(early, tokens):
                state.stats.steps += 1
                outputs.append(self._commit(rid, state, [token]))
            states = [(rid, s) for rid, s in states if not s.request.params.greedy]
            if not states:
                return outputs
        ks = {rid: self._step_k(state) for rid, state in states}
        proposals = {}
        if self.proposer is not None:
            drafts = [DraftRequest(rid, s.committed, ks[rid], s.request.params, s.seed) for rid, s in states]
            proposals = {d.request_id: p for d, p in zip(drafts, self.proposer.propose(drafts))}
        verify = []
        for rid, s in states:
            proposal = proposals.get(rid)
            tokens = proposal.tokens if proposal else []
            verify.append(VerifyRequest(rid, s.committed, tokens, proposal.probs if proposal else None,
                                        s.request.params, s.seed))
        for (rid, state), result in zip(states, self.verifier.verify(verify)):
            drafted = len(proposals[rid].tokens) if rid in proposals else 0  # a method may stop before k
            state.stats.steps += 1
            state.stats.proposed += drafted
            state.stats.accepted += result.accepted
            state.stats.rejected += result.accepted < drafted
            outputs.append(self._commit(rid, state, result.tokens))
        return outputs

    def _step_k(self, state: _Active) -> int:
        return draft_cap(state.request.k, state.request.max_new_tokens - len(state.generated))

    def _commit(self, rid: str, state: _Active, tokens: list[int]) -> StepOutput:
        tokens, stopped = cut(tokens, state.request.max_new_tokens - len(state.generated),
                              self.eos_token_id if state.request.stop_at_eos else None)
        state.finished = state.finished or stopped
        state.committed.extend(tokens)
        state.generated.extend(tokens)
        if len(state.generated) >= state.request.max_new_tokens:
            state.finished = True
        if state.finished:
            self.release(rid)
        return StepOutput(rid, tokens, state.finished, state.stats)

    def release(self, request_id: str) -> None:
        self._active.pop(request_id, None)
        self.target.release(request_id)
        if self.exit_decoder is not None:
            self.exit_decoder.release(request_id)
        if self.draft is not None:
            self.draft.release(request_id)

    def run(self, requests: list[GenerationRequest]) -> Iterator[StepOutput]:
        """Admit all requests, then step until every one has finished, yielding each step's output."""
        ids = [self.add(r) for r in requests]
        try:
            self.prefill()
            while self._active:
                yield from self.step()
        finally:
            for rid in ids:
                self.release(rid)

    def generate(self, requests: list[GenerationRequest]) -> list[tuple[list[int], RequestStats]]:
        """Run to completion; returns (generated tokens, stats) in request order."""
        ids = [r.request_id or f"gen-{next(self._ids)}" for r in requests]
        requests = [replace(r, request_id=rid) for r, rid in zip(requests, ids)]
        generated: dict[str, list[int]] = {rid: [] for rid in ids}
        stats: dict[str, RequestStats] = {}
        for out in self.run(requests):
            generated[out.request_id].extend(out.new_tokens)
            stats[out.request_id] = out.stats
        return [(generated[rid], stats[rid]) for rid in ids]
