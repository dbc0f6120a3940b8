"""The model-side half of a worker: request mirrors, batched calls into the runner, step costs.

Everything here is synchronous and runs on the worker's single model thread (the runner is not
thread-safe); `service.py` puts gRPC in front of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from specd.contract import MAX_K
from specd.errors import SpecdError
from specd.proto.v1 import common_pb2, worker_pb2
from specd.worker.acceptance import Acceptance
from specd.worker.methods import make_exit_decoder, make_proposer
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.sampling import SamplingParams
from specd.worker.servers.metrics import WorkerMetrics
from specd.worker.specee import SpecEEDecoder
from specd.worker.speculation import DraftProposer, DraftRequest, Verifier, VerifyRequest


def _check_k(request_id: str, k: int) -> None:
    if not 0 <= k <= MAX_K:
        raise SpecdError(f"request {request_id!r}: k must be in [0, {MAX_K}], got {k}")


class StaleRequest(SpecdError):
    """The router assumed a prefix of a request that this worker does not hold."""


@dataclass
class Mirror:
    """What a worker knows of one request: its committed tokens and its sampling state."""

    committed: list[int]
    params: SamplingParams
    seed: int  # of the request's noise (a failover draws a new one for an unseeded request: still exact)


def sampling_params(msg: common_pb2.SamplingParams) -> SamplingParams:
    return SamplingParams(temperature=msg.temperature, top_k=msg.top_k, top_p=msg.top_p or 1.0,
                          seed=msg.seed if msg.HasField("seed") else None)


def probs_to_bytes(probs: torch.Tensor | None) -> bytes:
    return b"" if probs is None else probs.to(dtype=torch.float32, device="cpu").contiguous().numpy().tobytes()


def probs_from_bytes(data: bytes, k: int, vocab: int) -> torch.Tensor | None:
    if not data:
        return None
    if len(data) != 4 * k * vocab:
        raise SpecdError(f"draft_probs holds {len(data)} bytes; [k={k}, vocab={vocab}] float32 needs {4 * k * vocab}")
    return torch.frombuffer(bytearray(data), dtype=torch.float32).view(k, vocab)


def _verdict(request: VerifyRequest, result: Acceptance) -> worker_pb2.Verdict:
    return worker_pb2.Verdict(accepted=result.accepted, tokens=result.tokens, drafted=len(request.draft_tokens))


class WorkerCore:
    """self_draft_method: a method the target worker runs itself (contract.IN_TARGET_METHODS): one
    that drafts and verifies inside the worker, or SpecEE, which decodes greedy requests with
    early exits (approximate) wherever the router asks for a plain step."""

    def __init__(self, role: str, runner: ModelRunner, model_dir: str | Path, tensor_parallel_size: int = 1,
                 self_draft_method: str = "") -> None:
        self.role = role
        self.runner = runner
        self.model_dir = str(model_dir)
        self.tensor_parallel_size = tensor_parallel_size
        self.mirrors: dict[str, Mirror] = {}
        self.calls = 0  # calls that ran the model (WorkerStats.calls)
        self.metrics = WorkerMetrics(role)
        self.proposer = DraftProposer(runner)
        self.verifier = Verifier(runner)
        self.self_draft_method = self_draft_method
        self.self_proposer = make_proposer(self_draft_method, runner, model_dir) if self_draft_method else None
        self.exit_decoder = make_exit_decoder(self_draft_method, runner, model_dir) if self_draft_method else None
        tokenizer = Path(model_dir) / "tokenizer.json"
        self.tokenizer_json = tokenizer.read_text() if tokenizer.is_file() else ""

    # -- requests ------------------------------------------------------------------------------

    def apply(self, delta: worker_pb2.CommittedDelta) -> Mirror:
        """Extend (or create) the mirror of a request with the tokens the router sent."""
        mirror = self.mirrors.get(delta.request_id)
        known = len(mirror.committed) if mirror else 0
        if delta.start > known:
            raise StaleRequest(f"request {delta.request_id!r}: {self.role} worker holds {known} committed tokens, "
                               f"the router sent tokens from position {delta.start}")
        if mirror is None:
            params = sampling_params(delta.sampling)
            mirror = self.mirrors[delta.request_id] = Mirror([], params, params.noise_seed())
        del mirror.committed[delta.start:]
        mirror.committed.extend(delta.tokens)
        if not mirror.committed:
            raise SpecdError(f"request {delta.request_id!r}: no committed tokens")
        return mirror

    def release(self, request_ids: list[str]) -> int:
        released = 0
        for rid in request_ids:
            self.mirrors.pop(rid, None)
            released += self.runner.release(rid)
        self._kv_metrics()
        return released

    def _kv_metrics(self) -> None:
        self.metrics.kv(self.runner.kv.used_tokens(), self.runner.kv.budget_tokens, len(self.mirrors))

    # -- model calls ---------------------------------------------------------------------------

    def prefill(self, deltas: list[worker_pb2.CommittedDelta]) -> worker_pb2.StepCost:
        """Cache every committed token but the last (its logits are what the next step needs)."""
        items = []
        for delta in deltas:
            mirror = self.apply(delta)
            pending = self.runner.sync(delta.request_id, mirror.committed)[:-1]
            if pending:
                items.append(ForwardItem(delta.request_id, pending, num_logits=0))
        return self._timed("prefill", lambda: self.runner.forward(items) if items else None, len(items))[1]

    def propose(self, items: list[worker_pb2.ProposeItem]) -> tuple[list[worker_pb2.Proposal], worker_pb2.StepCost]:
        requests = []
        for item in items:
            _check_k(item.delta.request_id, item.k)
            mirror = self.apply(item.delta)
            requests.append(DraftRequest(item.delta.request_id, mirror.committed, item.k, mirror.params, mirror.seed))
        # the first pass feeds what each cache misses, every later pass one token per request
        fed = sum(len(self.runner.sync(r.request_id, r.committed)) + r.k - 1 for r in requests if r.k)
        proposals, cost = self._timed("propose", lambda: self.proposer.propose(requests), len(items),
                                      passes=max((r.k for r in requests), default=0), tokens=fed)
        return [worker_pb2.Proposal(tokens=p.tokens, probs=probs_to_bytes(p.probs)) for p in proposals], cost

    def verify(self, items: list[worker_pb2.VerifyItem]) -> tuple[list[worker_pb2.Verdict], worker_pb2.StepCost]:
        vocab = self.runner.config.vocab_size
        requests, own_drafts = [], []
        for item in items:
            rid = item.delta.request_id
            if item.self_draft_k and item.draft_tokens:
                raise SpecdError(f"request {rid!r}: give draft_tokens or self_draft_k, not both")
            if item.self_draft_k and self.self_proposer is None:  # specee drafts nothing either
                raise SpecdError(f"request {rid!r}: self_draft_k needs a target worker with its own draft method "
                                 f"(this one drafts nothing itself)")
            _check_k(rid, len(item.draft_tokens) or item.self_draft_k)
            mirror = self.apply(item.delta)
            drafts = list(item.draft_tokens)
            probs = probs_from_bytes(item.draft_probs, len(drafts), vocab)
            if drafts and probs is None and not mirror.params.greedy:
                raise SpecdError(f"request {rid!r}: sampled verification needs draft_probs")
            requests.append(VerifyRequest(rid, mirror.committed, drafts, probs, mirror.params, mirror.seed))
            if item.self_draft_k:
                own_drafts.append((requests[-1], DraftRequest(rid, mirror.committed, item.self_draft_k, mirror.params,
                                                              mirror.seed)))
        if self.exit_decoder is not None:
            return self._verify_with_exits(self.exit_decoder, requests)
        draft_seconds, drafted = 0.0, []
        if own_drafts and self.self_proposer is not None:  # refused above without a proposer
            started = time.perf_counter()
            proposals = self.self_proposer.propose([d for _, d in own_drafts])
            draft_seconds = time.perf_counter() - started
            for (request, _), proposal in zip(own_drafts, proposals):
                request.draft_tokens, request.draft_probs = proposal.tokens, proposal.probs
            drafted = [len(p.tokens) for p in proposals]
        results, cost = self._timed("verify", lambda: self.verifier.verify(requests), len(items))
        cost.compute_seconds += draft_seconds
        cost.draft_seconds, cost.draft_passes, cost.draft_tokens = draft_seconds, max(drafted, default=0), sum(drafted)
        return [_verdict(request, result) for request, result in zip(requests, results)], cost

    def _verify_with_exits(self, decoder: SpecEEDecoder,
                           requests: list[VerifyRequest]) -> tuple[list[worker_pb2.Verdict], worker_pb2.StepCost]:
        """SpecEE: the plain steps of greedy requests exit early (one token each); the rest verify."""
        early = [r for r in requests if r.params.greedy and not r.draft_tokens]
        exact = [r for r in requests if not (r.params.greedy and not r.draft_tokens)]
        started = time.perf_counter()
        verdicts: dict[str, worker_pb2.Verdict] = {}
        if early:
            tokens = decoder.step([(r.request_id, r.committed) for r in early])
            verdicts.update((r.request_id, worker_pb2.Verdict(tokens=[t])) for r, t in zip(early, tokens))
        if exact:
            verdicts.update((r.request_id, _verdict(r, v)) for r, v in zip(exact, self.verifier.verify(exact)))
        seconds = time.perf_counter() - started
        self.calls += 1
        self.metrics.call("verify", seconds, 1, len(requests))
        self._kv_metrics()
        return [verdicts[r.request_id] for r in requests], worker_pb2.StepCost(
            compute_seconds=seconds, forward_passes=1, tokens=len(requests))

    def _timed(self, kind: str, call, batch_size: int, passes: int = 1, tokens: int | None = None):
        """Run `call`, count it and record its cost; `tokens` defaults to what the last pass was fed."""
        started = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - started
        if tokens is None:
            tokens = self.runner.forward_tokens if batch_size else 0
        if passes and batch_size:
            self.calls += 1
            self.metrics.call(kind, seconds, passes, tokens)
        self._kv_metrics()
        return result, worker_pb2.StepCost(compute_seconds=seconds, forward_passes=passes, tokens=tokens)

    # -- queries -------------------------------------------------------------------------------

    def info(self) -> worker_pb2.ModelInfo:
        cfg = self.runner.config
        info = worker_pb2.ModelInfo(role=self.role, model=self.model_dir, vocab_size=cfg.vocab_size,
                                    max_context=self.runner.max_context, tokenizer_json=self.tokenizer_json,
                                    tensor_parallel_size=self.tensor_parallel_size,
                                    draft_method=self.self_draft_method)
        if cfg.eos_token_id is not None:
            info.eos_token_id = cfg.eos_token_id
        return info

    def stats(self) -> worker_pb2.WorkerStats:
        return worker_pb2.WorkerStats(role=self.role, active_requests=len(self.mirrors),
                                      kv_used_tokens=self.runner.kv.used_tokens(),
                                      kv_budget_tokens=self.runner.kv.budget_tokens, calls=self.calls)
