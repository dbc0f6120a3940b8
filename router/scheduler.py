"""The iteration pipeline: admission, batching, draft -> verify, commit, failover.

Each live target replica runs `pipeline_depth` lanes. A lane repeatedly takes the best batch
(policy order) among the requests pinned to its replica that no other lane holds, and runs one
iteration: prefill what the workers miss, choose k, Propose on the draft replicas, Verify on the
target, commit the tokens and stream them out. With two lanes, one lane's drafting overlaps the
other's verification. A target worker with its own draft method (early-exit, hierarchical,
ngram) drafts inside the Verify call (`self_draft_k`): there is no draft pool to call, and its
report splits the call's time into drafting and verification for the cost model.

Failure handling: a worker call that fails marks the replica down (it is probed until it serves
again). A request whose target replica is gone is pinned to another one and prefilled there
from its committed tokens, so its stream goes on without losing or repeating tokens; with no
target replica left it fails with UNAVAILABLE. Without a live draft replica, k = 0.

KV pressure: a worker whose KV budget is full answers RESOURCE_EXHAUSTED. The router then
preempts by recomputation: it releases the cache of the lowest-priority request the worker holds
that is not running, and that request waits until a request on the replica finishes (or nothing
runs there); its cache is rebuilt from its committed tokens when it runs again. Only a request
that does not fit even alone fails, with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import grpc

from specd import contract
from specd.proto.v1 import serving_pb2, worker_pb2
from specd.router.config import RouterConfig
from specd.router.decisions import Decisions, RequestFailed
from specd.router.metrics import RouterMetrics
from specd.router.replicas import Replica, ReplicaPool
from specd.router.request import Request

__all__ = ["RequestFailed", "Scheduler"]
log = logging.getLogger(__name__)
WORKER_TIMEOUT_S = 60.0
# worker answers that mean "this call was wrong", not "this worker is broken"
_REQUEST_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}


class Signal:
    """Wakes every waiting lane; no lost wake-ups since asyncio never interleaves sync code."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future] = []

    async def wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def fire(self) -> None:
        for future in self._waiters:
            if not future.done():
                future.set_result(None)
        self._waiters.clear()


class Scheduler:
    """The live router's iteration pipeline: `Decisions` decides, this class does the I/O."""

    def __init__(self, config: RouterConfig, pool: ReplicaPool) -> None:
        self.config = config
        self.pool = pool
        self.decisions = Decisions(config)
        self.lengths = self.decisions.lengths
        self.requests = self.decisions.requests  # admitted, not finished
        self.accepting = True
        self._signal = Signal()
        self._lanes: dict[str, list[asyncio.Task]] = {}
        self._background: set[asyncio.Task] = set()
        self._busy: dict[str, int] = {}  # target address -> lanes inside an iteration
        self.metrics = RouterMetrics(os.environ.get(contract.SERVICE_ENV, "local"), config.policy,
                                     config.speculation_label, self.stats)

    # -- admission, cancellation ---------------------------------------------------------------

    def admit(self, r: Request) -> None:
        self.decisions.check_admission(self.accepting)
        target = self.pool.place("target")
        if target is None:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "no target worker is available")
        self.decisions.admit(r, target.address)
        self._pin(r, "target", target)
        self.metrics.admitted(len(r.prompt))
        self._signal.fire()

    def stats(self) -> serving_pb2.RouterStats:
        return self.decisions.stats(len(self.pool.live("target")), len(self.pool.live("draft")))

    def cancel(self, r: Request) -> None:
        """The client went away: stop generating and free the request's KV caches."""
        if r.done:
            return
        r.cancelled = True
        if not r.in_flight:
            self._retire(r)

    async def drain(self) -> None:
        """Stop admitting; return when every admitted request has finished."""
        self.accepting = False
        while self.requests:
            await asyncio.sleep(0.05)

    # -- the lanes -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the replica pool: start lanes for live targets, re-pin requests of dead ones."""
        while True:
            self.pool.changed.clear()
            self._repin()
            for replica in self.pool.live("target"):
                lanes = [t for t in self._lanes.get(replica.address, []) if not t.done()]
                while len(lanes) < self.config.pipeline_depth:
                    lanes.append(asyncio.ensure_future(self._lane(replica)))
                self._lanes[replica.address] = lanes
            self._signal.fire()
            await self.pool.changed.wait()

    async def stop(self, release_timeout_s: float = 5.0) -> None:
        """Stop the lanes; let the Release calls under way land first (else the workers would keep
        the caches of requests that finished just before the stop)."""
        lanes = [t for lanes in self._lanes.values() for t in lanes]
        for task in lanes:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        if self._background:
            _, late = await asyncio.wait(list(self._background), timeout=release_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _lane(self, replica: Replica) -> None:
        while replica.live:
            batch = self.decisions.pick(replica.address, replica.kv_waiting)
            if not batch:
                await self._signal.wait()
                continue
            self._busy[replica.address] = self._busy.get(replica.address, 0) + 1
            try:
                await self._iterate(replica, batch)
            except Exception as exc:  # a bug must not kill the lane: fail the batch, keep serving
                log.exception("iteration failed")
                for r in batch:
                    self._fail(r, RequestFailed(grpc.StatusCode.INTERNAL, f"internal error: {exc}"))
            finally:
                self._busy[replica.address] -= 1
                self.decisions.end(batch)
                for r in batch:
                    if r.cancelled:
                        self._retire(r)
                self._repin()
                self._signal.fire()

    # -- one iteration -------------------------------------------------------------------------

    async def _iterate(self, target: Replica, batch: list[Request]) -> None:
        self._place_drafts(batch)
        await self._prefill(target, batch)
        if not target.live:
            return
        batch = [r for r in batch if not r.done and r.sent.get(target.address)]  # a failed prefill drops out
        if not batch:
            return
        # a target with its own draft method drafts inside the Verify call: no draft pool, no overlap
        own_drafts = bool(target.info and target.info.draft_method in contract.TARGET_DRAFT_METHODS)
        live_drafts = {d.address for d in self.pool.live("draft")}
        drafting = [own_drafts or r.draft in live_drafts for r in batch]
        ks = self.decisions.choose(batch, drafting,
                                   overlapped=not own_drafts and self._busy.get(target.address, 0) > 1)
        k_of = {r.id: k for r, k in zip(batch, ks)}
        proposals = {} if own_drafts else await self._propose(batch, ks)
        batch = [r for r in batch if not r.done]  # failed by a draft worker (retired) or cancelled meanwhile
        if not batch:
            return
        items = []
        for r in batch:
            if own_drafts:
                items.append(worker_pb2.VerifyItem(delta=self._delta(r, target.address), self_draft_k=k_of[r.id]))
                continue
            tokens, probs = proposals.get(r.id, ([], b""))
            items.append(worker_pb2.VerifyItem(delta=self._delta(r, target.address), draft_tokens=tokens,
                                               draft_probs=probs))
        context = sum(len(r.committed) for r in batch)  # cached tokens the pass reads (the cost model's)
        started = time.perf_counter()
        try:
            reply = await target.stub.Verify(worker_pb2.VerifyRequest(items=items), timeout=WORKER_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self._call_failed(target, batch, exc)
            return
        cost, round_trip = reply.cost, time.perf_counter() - started
        costs = self.decisions.costs
        if cost.draft_passes:  # drafted inside the target: its share is the draft cost, with no RPC of its own
            costs.observe_draft(cost.draft_tokens / cost.draft_passes, cost.draft_passes, cost.draft_seconds,
                                cost.draft_seconds, context)
        costs.observe_target(cost.tokens, cost.compute_seconds - cost.draft_seconds,
                             round_trip - cost.draft_seconds, context)
        done = time.monotonic()
        for r, verdict in zip(batch, reply.verdicts):
            self._commit(r, verdict.drafted, verdict, done)

    def _commit(self, r: Request, k: int, verdict: worker_pb2.Verdict, now: float) -> None:
        committed = self.decisions.commit(r, k, verdict.accepted, list(verdict.tokens), now)
        self.metrics.verified(k, verdict.accepted)
        if committed.tokens:
            r.events.put_nowait(committed.tokens)
            self.metrics.streamed(len(committed.tokens))
        if committed.finish_reason:
            self.metrics.finished(serving_pb2.FinishReason.Name(committed.finish_reason)
                                  .removeprefix("FINISH_REASON_").lower(),
                                  r.arrival, r.first_scheduled, r.first_token, now, r.generated)
            r.events.put_nowait(None)
            self._retire(r)

    def _delta(self, r: Request, address: str) -> worker_pb2.CommittedDelta:
        start = r.sent.get(address, 0)
        r.sent[address] = len(r.committed)
        return worker_pb2.CommittedDelta(request_id=r.id, start=start, tokens=r.committed[start:], sampling=r.sampling)

    async def _prefill(self, target: Replica, batch: list[Request]) -> None:
        """Prefill on the target the requests new to it (admission, or after a failover).

        Draft replicas are not prefilled ahead: their first Propose feeds what their cache misses,
        so a request that never drafts (k = 0 chosen, or speculation disabled) costs them nothing.
        """
        fresh = [r for r in batch if not r.sent.get(target.address)]
        if not fresh:
            return
        request = worker_pb2.PrefillRequest(items=[self._delta(r, target.address) for r in fresh])
        try:
            await target.stub.Prefill(request, timeout=WORKER_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self._call_failed(target, fresh, exc)

    async def _propose(self, batch: list[Request], ks: list[int]) -> dict[str, tuple[list[int], bytes]]:
        """Draft on every draft replica of the batch at once; a failed replica's requests get k = 0."""
        k_of = {r.id: k for r, k in zip(batch, ks)}
        groups = {d: [r for r in members if k_of[r.id] > 0] for d, members in self._by_draft(batch).items()}
        groups = {d: members for d, members in groups.items() if members}
        # every call returns before a failure is handled: a failed replica's requests go on without drafts
        results = await asyncio.gather(*(self._propose_one(d, members, k_of) for d, members in groups.items()),
                                       return_exceptions=True)
        proposals: dict[str, tuple[list[int], bytes]] = {}
        for (draft, members), result in zip(groups.items(), results):
            if isinstance(result, grpc.aio.AioRpcError):
                self._call_failed(draft, members, result)
                continue
            if isinstance(result, BaseException):
                raise result
            for r, proposal in zip(members, result):
                proposals[r.id] = (list(proposal.tokens), proposal.probs)
        return proposals

    async def _propose_one(self, draft: Replica, members: list[Request],
                           k_of: dict[str, int]) -> list[worker_pb2.Proposal]:
        items = [worker_pb2.ProposeItem(delta=self._delta(r, draft.address), k=k_of[r.id]) for r in members]
        started = time.perf_counter()
        reply = await draft.stub.Propose(worker_pb2.ProposeRequest(items=items), timeout=WORKER_TIMEOUT_S)
        cost = reply.cost
        if cost.forward_passes:
            self.decisions.observe_draft(cost.tokens / cost.forward_passes, cost.forward_passes,
                                         cost.compute_seconds, time.perf_counter() - started, time.monotonic(),
                                         sum(len(r.committed) for r in members))
        return list(reply.proposals)

    # -- placement and failures ----------------------------------------------------------------

    def _by_draft(self, batch: list[Request]) -> dict[Replica, list[Request]]:
        groups: dict[Replica, list[Request]] = {}
        for r in batch:
            replica = self.pool.replicas.get(r.draft or "")
            if replica is not None and replica.live:
                groups.setdefault(replica, []).append(r)
        return groups

    def _place_drafts(self, batch: list[Request]) -> None:
        for r in batch:
            replica = self.pool.replicas.get(r.draft or "")
            if self.decisions.may_draft(r) and (replica is None or not replica.live):
                self._unpin(r, "draft")
                draft = self._compatible_draft(r.target)
                if draft is not None:
                    self._pin(r, "draft", draft)

    def _compatible_draft(self, target: str | None) -> Replica | None:
        targets = [t.info.vocab_size for t in self.pool.live("target") if t.info]
        draft = self.pool.place("draft", target)
        if draft is None or not targets or not draft.info or draft.info.vocab_size != targets[0]:
            return None
        return draft

    def _pin(self, r: Request, role: str, replica: Replica) -> None:
        if role == "target":
            self.decisions.move(r, replica.address)
        else:
            r.draft = replica.address
        r.sent.pop(replica.address, None)
        replica.pinned.add(r.id)

    def _unpin(self, r: Request, role: str) -> None:
        address = getattr(r, role)
        if address:
            replica = self.pool.replicas.get(address)
            if replica is not None:
                replica.pinned.discard(r.id)
            r.sent.pop(address, None)
        if role == "target":
            self.decisions.move(r, None)
        else:
            r.draft = None

    def _call_failed(self, replica: Replica, members: list[Request], exc: grpc.aio.AioRpcError) -> None:
        for r in members:
            r.sent.pop(replica.address, None)  # its state there is unknown: send everything next time
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return  # the worker lost track of a request; re-sent from 0 next iteration
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self._make_room(replica, members, exc.details())
            return
        if exc.code() in _REQUEST_ERRORS:
            for r in members:
                self._fail(r, RequestFailed(exc.code(), f"{replica.role} worker: {exc.details()}"))
            return
        self.pool.mark_down(replica, f"{exc.code().name}: {exc.details()}")

    def _make_room(self, replica: Replica, members: list[Request], details: str) -> None:
        """`replica`'s KV budget is full: evict the lowest-priority request it holds that is not
        running; failing that, one of the batch that failed, unless it ran alone there."""
        holders = [r for r in self.requests.values() if r.sent.get(replica.address) and not r.in_flight
                   and r not in members and not r.done]
        if holders:
            self._evict(self.decisions.policy.order(holders)[-1], replica)
        elif replica.role == "draft":
            pass  # the batch went on without drafts this iteration
        elif len(members) > 1 or any(r.in_flight and r.target == replica.address and r not in members
                                     for r in self.requests.values()):
            self._evict(self.decisions.policy.order(members)[-1], replica)
        else:
            for r in members:
                self._fail(r, RequestFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            f"the request does not fit in the {replica.role} worker's KV cache "
                                            f"even alone: {details}"))

    def _evict(self, r: Request, replica: Replica) -> None:
        log.info("KV of %s full: request %s waits (its cache is recomputed when it runs again)", replica.address, r.id)
        self.metrics.preempted()
        r.sent.pop(replica.address, None)
        if replica.role == "target":
            replica.kv_waiting.add(r.id)
        self._release_later(replica, r.id)

    def _repin(self) -> None:
        """Move requests off target replicas that are gone; fail them if none is left."""
        for r in list(self.requests.values()):
            replica = self.pool.replicas.get(r.target or "")
            if r.in_flight or r.done or (replica is not None and replica.live):
                continue
            self._unpin(r, "target")
            target = self.pool.place("target")
            if target is None:
                self._fail(r, RequestFailed(grpc.StatusCode.UNAVAILABLE,
                                            "the request's target worker failed and no other target worker is left"))
            else:
                log.info("request %s moves to target %s (prefilled again)", r.id, target.address)
                self.metrics.failed_over()
                self._pin(r, "target", target)

    def _fail(self, r: Request, error: RequestFailed) -> None:
        if r.done:
            return
        r.finished_at = time.monotonic()
        self.metrics.failed(error.code.name)
        r.events.put_nowait(error)
        self._retire(r)

    def _retire(self, r: Request) -> None:
        """Forget a finished or cancelled request and free its KV caches on its workers."""
        if not self.decisions.forget(r):
            return
        for role in ("target", "draft"):
            replica = self.pool.replicas.get(getattr(r, role) or "")
            self._unpin(r, role)
            if replica is not None and replica.live:
                replica.kv_waiting.clear()  # room freed: evicted requests may try again
                self._release_later(replica, r.id)
        self._signal.fire()

    def _release_later(self, replica: Replica, request_id: str) -> None:
        task = asyncio.ensure_future(self._release(replica, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _release(replica: Replica, request_id: str) -> None:
        try:
            await replica.stub.Release(worker_pb2.ReleaseRequest(request_ids=[request_id]), timeout=10)
        except grpc.aio.AioRpcError:
            replica.orphans.add(request_id)  # released when it answers again
