"""`specd bench calibrate`: a step-time profile of this machine's workers, for the simulator.

It starts a target and a draft worker on loopback (the demo models by default) and drives them
as the router does (Prefill, then Propose -> Verify iterations) over the serving benchmark's
prompts at several batch sizes and speculation lengths. Each reply carries the worker's own
measured compute time (StepCost); a least-squares fit of seconds = base + per_token * tokens +
per_context * context gives each role's PassCost (the target's Prefill calls a cost of their own:
they compute logits for the last token only), and the median of round trip minus compute each
role's round trip. It also records each request's acceptance rate per kind of prompt (code, prose):
the simulator replays the benchmark's workload with them (`specd bench simulate --validate`).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from specd.commit_rule import draft_cap
from specd.sim.profiles import PassCost, Profile


def _resized(tokens: list[int], length: int | None) -> list[int]:
    return tokens if length is None else (tokens * (length // max(len(tokens), 1) + 1))[:length]


def fit(samples: list[tuple[float, float, float]]) -> PassCost:
    """Least squares of seconds on (tokens, context), coefficients clipped at zero."""
    x = np.array([[1.0, tokens, context] for tokens, context, _ in samples])
    y = np.array([seconds for _, _, seconds in samples])
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    base, per_token, per_context = (max(float(c), 0.0) for c in coefficients)
    return PassCost(base, per_token, per_context)


def calibrate(target_dir: Path, draft_dir: Path, batch_sizes: tuple[int, ...] = (1, 2, 4),
              ks: tuple[int, ...] = (0, 2, 4, 8), contexts: tuple[int | None, ...] = (None, 320),
              iterations: int = 6, seed: int = 0) -> dict[str, Any]:
    """contexts: prompt lengths in tokens (None: the benchmark's prompt as it is; a number: the
    prompt repeated to that length), so that the context a pass reads varies apart from the batch
    size and the fit can tell the two apart. Acceptance is recorded on the prompts as they are."""
    import grpc

    from specd.bench import serve as bench
    from specd.proto.v1 import worker_pb2, worker_pb2_grpc
    from specd.router.local import LocalStack
    from specd.worker.tokenizer import Tokenizer

    tokenizer = Tokenizer(target_dir)
    drawn = bench.workload(bench.Settings(requests=2 * max(batch_sizes) * len(ks) * len(contexts)), seed)
    # code and prose take turns, so that every kind's acceptance is measured however few runs there are
    items = [item for pair in zip(*([i for i in drawn if i.kind == kind] for kind in ("code", "prose")))
             for item in pair]
    target_samples: list[tuple[float, float, float]] = []
    prefill_samples: list[tuple[float, float, float]] = []  # apart: no logits but the last, no drafts
    draft_samples: list[tuple[float, float, float]] = []
    overheads: dict[str, list[float]] = {"target": [], "draft": []}
    acceptance: dict[str, list[float]] = {"code": [], "prose": []}
    stack = LocalStack()
    try:
        target, draft = stack.start_worker("target", target_dir), stack.start_worker("draft", draft_dir)
        for worker in (target, draft):
            stack.wait_serving(worker, 300)
        with grpc.insecure_channel(target.address) as t_channel, grpc.insecure_channel(draft.address) as d_channel:
            t_stub, d_stub = worker_pb2_grpc.TargetWorkerStub(t_channel), worker_pb2_grpc.DraftWorkerStub(d_channel)
            n = 0
            for batch_size, k, length in itertools.product(batch_sizes, ks, contexts):
                chosen = [items[(n + i) % len(items)] for i in range(batch_size)]
                n += batch_size
                ids = [f"calibrate-{n}-{i}" for i in range(batch_size)]
                committed = {rid: _resized(tokenizer.encode(item.prompt), length) for rid, item in zip(ids, chosen)}
                trials = {rid: [0, 0] for rid in ids}  # accepted, accepted + rejections
                prefill = t_stub.Prefill(worker_pb2.PrefillRequest(items=[
                    worker_pb2.CommittedDelta(request_id=rid, tokens=committed[rid]) for rid in ids]))
                prefill_samples.append((sum(map(len, committed.values())), 0.0, prefill.cost.compute_seconds))
                sent = {rid: len(committed[rid]) for rid in ids}
                drafted = {rid: 0 for rid in ids}
                # prompts as they are generate to the benchmark's lengths (acceptance changes as a generation
                # goes on); repeated prompts run `iterations` steps
                limit = {rid: item.max_new_tokens if length is None else 10**9 for rid, item in zip(ids, chosen)}
                begin = dict(sent)
                for step in itertools.count():
                    left = {rid: limit[rid] - (len(committed[rid]) - begin[rid]) for rid in ids}
                    active = [rid for rid in ids if left[rid] > 0]
                    if not active or (length is not None and step >= iterations):
                        break
                    k_of = {rid: draft_cap(k, left[rid]) for rid in active}
                    context = sum(len(committed[rid]) for rid in active)
                    proposals: dict[str, Any] = {}
                    drafting = [rid for rid in active if k_of[rid]]
                    if drafting:
                        request = worker_pb2.ProposeRequest(items=[worker_pb2.ProposeItem(
                            delta=worker_pb2.CommittedDelta(request_id=rid, start=drafted[rid],
                                                            tokens=committed[rid][drafted[rid]:]), k=k_of[rid])
                            for rid in drafting])
                        started = time.perf_counter()
                        reply = d_stub.Propose(request)
                        trip = time.perf_counter() - started
                        cost = reply.cost
                        # the first Propose feeds the prompts too (cheap tokens: no logits but the last's);
                        # the simulator charges a draft's catch-up the same way, so the fit spans both
                        draft_samples.append((cost.tokens / cost.forward_passes, context,
                                              cost.compute_seconds / cost.forward_passes))
                        overheads["draft"].append(trip - cost.compute_seconds)
                        proposals = dict(zip(drafting, reply.proposals))
                        for rid in drafting:
                            drafted[rid] = len(committed[rid])  # the committed tokens it holds
                    verify = worker_pb2.VerifyRequest(items=[worker_pb2.VerifyItem(
                        delta=worker_pb2.CommittedDelta(request_id=rid, start=sent[rid],
                                                        tokens=committed[rid][sent[rid]:]),
                        draft_tokens=proposals[rid].tokens if rid in proposals else [],
                        draft_probs=proposals[rid].probs if rid in proposals else b"") for rid in active])
                    started = time.perf_counter()
                    reply = t_stub.Verify(verify)
                    trip = time.perf_counter() - started
                    target_samples.append((reply.cost.tokens, context, reply.cost.compute_seconds))
                    overheads["target"].append(trip - reply.cost.compute_seconds)
                    for rid, verdict in zip(active, reply.verdicts):
                        sent[rid] = len(committed[rid])
                        committed[rid].extend(verdict.tokens)
                        if k_of[rid]:
                            trials[rid][0] += verdict.accepted
                            trials[rid][1] += verdict.accepted + (verdict.accepted < k_of[rid])
                release = worker_pb2.ReleaseRequest(request_ids=ids)
                t_stub.Release(release)
                d_stub.Release(release)
                for rid, item in zip(ids, chosen):
                    accepted, total = trials[rid]
                    if total and length is None:
                        acceptance[item.kind].append(round(accepted / total, 4))
    finally:
        stack.stop()
    profile = Profile(name="calibrated", target=fit(target_samples), draft=fit(draft_samples),
                      prefill=fit(prefill_samples),
                      rpc_s=max(statistics.median(overheads["target"]), 0.0),
                      draft_rpc_s=max(statistics.median(overheads["draft"]), 0.0),
                      source=f"specd bench calibrate on this machine: {target_dir.name} / {draft_dir.name}, "
                             f"{len(target_samples)} target and {len(draft_samples)} draft calls")
    return {**json.loads(profile.to_json()), "acceptance": acceptance}
