"""The discrete-event loop: one or more routers (each the router's own `Decisions`) over
simulated target and draft replicas, on a virtual clock.

A lane of a target replica repeats the live router's iteration (router/scheduler.py): pick a
batch, prefill what the target misses, choose k, Propose on the draft replicas, Verify on the
target, commit. A replica serves one call at a time (calls queue behind each other, as on a
worker's device); a call costs its profile's compute plus one round trip. Each drafted token
is accepted with the request's true acceptance rate until the first rejection, and the verify
emits one more token (the correction or the bonus). A request ends at its true length with
its end-of-text token, which the router's commit sees as it sees a worker's.

Not modelled: KV-cache capacity (preempted requests keep their caches, as if memory sufficed),
worker failures, and the draft's first-pass feeding of context beyond its token count.
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from specd.proto.v1 import common_pb2
from specd.router.config import RouterConfig
from specd.router.decisions import Decisions, RequestFailed
from specd.router.partition import share
from specd.router.policies import LAPSSD
from specd.router.replicas import drafts_for, least_pinned
from specd.router.request import Request
from specd.sim.profiles import Profile
from specd.sim.workloads import Arrival

TOKEN, STOP = 1, 2  # every simulated token is TOKEN; STOP is the end-of-text token
SAMPLING = common_pb2.SamplingParams()


@dataclass(eq=False)
class SimReplica:
    role: str
    address: str
    pinned: set[str] = field(default_factory=set)
    free_at: float = 0.0  # when the call under way ends
    busy_s: float = 0.0  # compute seconds served (utilisation)
    leaving: bool = False  # scaled down: takes no new work, its calls under way finish

    def call(self, now: float, compute_s: float, rpc_s: float) -> float:
        """Queue a call arriving at `now`; returns when its reply arrives."""
        start = max(now + rpc_s / 2, self.free_at)
        self.free_at = start + compute_s
        self.busy_s += compute_s
        return self.free_at + rpc_s / 2


@dataclass(eq=False)
class Lane:
    router: int
    target: SimReplica
    busy: bool = False


@dataclass(frozen=True)
class Finished:
    kind: str
    arrival: float
    first_token: float
    finished: float
    tokens: int
    proposed: int
    accepted: int
    iterations: int


@dataclass
class Truth:
    """What the router cannot see: the request's true length and acceptance."""

    arrival: Arrival
    executed: int = 0  # iterations run after LAPS-SD estimated its remaining execution
    estimate: tuple[float, float] | None = None  # (remaining iterations estimated, the same with its true length)


@dataclass(frozen=True)
class Setup:
    """One simulated cluster: the routers' configuration, the workers' profile, the fleet."""

    config: RouterConfig
    profile: Profile
    targets: int = 1
    drafts: int = 1
    routers: int = 1
    partition: bool = False  # each router sees every routers-th replica (else all of them)
    seed: int = 0  # of the acceptance draws


class Simulation:
    def __init__(self, setup: Setup) -> None:
        config, routers, partition = setup.config, setup.routers, setup.partition
        self.config = config
        self.profile = setup.profile
        self.now = 0.0
        self.rng = random.Random(setup.seed)
        self.routers = [Decisions(config, clock=lambda: self.now) for _ in range(routers)]
        self.targets = [SimReplica("target", f"target-{i}") for i in range(setup.targets)]
        self.drafts = [SimReplica("draft", f"draft-{i}") for i in range(setup.drafts)]
        # each router sees every replica, or (partition) its share, as live router replicas do
        names = [f"router-{i}" for i in range(routers)]
        every = {"target": [t.address for t in self.targets], "draft": [d.address for d in self.drafts]}
        shares = [share(every, names, name) if partition else every for name in names]
        self.replicas = {r.address: r for r in self.targets + self.drafts}
        self.sees_targets = [[self.replicas[a] for a in s["target"]] for s in shares]
        self.sees_drafts = [[self.replicas[a] for a in s["draft"]] for s in shares]
        self.lanes = {(i, t.address): [Lane(i, t) for _ in range(config.pipeline_depth)]
                      for i in range(routers) for t in self.sees_targets[i]}
        self.in_iteration = {key: 0 for key in self.lanes}  # lanes inside an iteration (the overlap flag)
        self.truth: dict[str, Truth] = {}
        self.finished: list[Finished] = []
        self.estimates: list[tuple[float, float, int]] = []  # LAPS-SD's (estimate, with the true length, actual)
        self.rejected = 0
        self.migrated = 0  # requests moved off a target replica that left
        self.decisions = 0  # batches picked
        self.streamed = 0  # tokens committed so far
        self.in_system = 0  # admitted, unfinished
        # capacity: tokens streamed while every lane could run a full batch, and until when
        self.slots = config.max_batch_size * config.pipeline_depth * len(self.targets)
        self.full_until: tuple[float, int] | None = None
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._next_router = itertools.cycle(range(routers))
        self._no_kv_waiting: set[str] = set()  # the simulation has no KV evictions

    # -- the event loop -------------------------------------------------------------------------

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._seq), fn, args))

    def run(self, arrivals: list[Arrival], horizon_s: float | None = None) -> "Result":
        """Serve `arrivals`; stop at `horizon_s` (default: never) with the rest unfinished."""
        started = time.perf_counter()
        for i, a in enumerate(arrivals):
            self.at(a.at, self._arrive, i, a)
        while self._events:
            when, _, fn, args = heapq.heappop(self._events)
            if horizon_s is not None and when > horizon_s:
                break
            self.now = when
            fn(*args)
        return Result(self, arrivals, time.perf_counter() - started)

    # -- arrivals -------------------------------------------------------------------------------

    def _arrive(self, i: int, a: Arrival) -> None:
        router = next(self._next_router)
        d = self.routers[router]
        try:
            d.check_admission(True)
        except RequestFailed:
            self.rejected += 1
            return
        target = least_pinned(self.sees_targets[router])
        r = Request(id=str(i), prompt=[TOKEN] * a.prompt_tokens, max_new_tokens=a.max_new_tokens, sampling=SAMPLING,
                    max_k=self.config.k_limit, stop_token=STOP, predicted_length=d.lengths.predict(a.max_new_tokens),
                    arrival=a.at)
        self.truth[r.id] = Truth(a)
        self.in_system += 1
        d.admit(r, target.address)
        target.pinned.add(r.id)
        self._wake(router, target.address)

    def _wake(self, router: int, target: str) -> None:
        for lane in self.lanes[(router, target)]:
            if not lane.busy:
                self._start(lane)

    # -- one iteration, as the live router runs it ----------------------------------------------

    def _start(self, lane: Lane) -> None:
        d, target = self.routers[lane.router], lane.target
        if target.leaving:
            self._migrate(lane)
            return
        batch = d.pick(target.address, self._no_kv_waiting)
        if not batch:
            return
        self.decisions += 1
        lane.busy = True
        self.in_iteration[(lane.router, target.address)] += 1
        fresh = [r for r in batch if target.address not in r.sent]
        if fresh:  # Prefill on the target the requests new to it
            for r in fresh:
                r.sent[target.address] = len(r.committed)
            tokens = sum(len(r.committed) for r in fresh)
            done = target.call(self.now, self.profile.prefill_seconds(tokens), self.profile.round_trip("target"))
            self.at(done, self._draft, lane, batch)
        else:
            self._draft(lane, batch)

    def _draft(self, lane: Lane, batch: list[Request]) -> None:
        d, router = self.routers[lane.router], lane.router
        for r in batch:  # pin a draft replica to requests that may draft (as Scheduler._place_drafts)
            if r.draft is not None and self.replicas[r.draft].leaving:  # k = 0 until pinned to another one
                self.replicas[r.draft].pinned.discard(r.id)
                r.draft = None
            if d.may_draft(r) and r.draft is None and self.sees_drafts[router]:
                draft = least_pinned(drafts_for(lane.target.address, self.sees_targets[router],
                                                self.sees_drafts[router]))
                r.draft = draft.address
                draft.pinned.add(r.id)
        ks = d.choose(batch, [r.draft is not None for r in batch],
                      overlapped=self.in_iteration[(router, lane.target.address)] > 1)
        groups: dict[str, list[tuple[Request, int]]] = {}
        for r, k in zip(batch, ks):
            if k > 0 and r.draft is not None:
                groups.setdefault(r.draft, []).append((r, k))
        drafted_at = self.now
        observations = []
        for address, members in groups.items():
            draft = self.replicas[address]
            passes = max(k for _, k in members)
            missed = sum(len(r.committed) - r.sent.get(address, 0) for r, _ in members)  # fed in the first pass
            context = sum(len(r.committed) for r, _ in members)
            fed = [sum(1 for _, k in members if k > j) for j in range(passes)]
            compute = sum(self.profile.draft(n + (missed if j == 0 else 0), context) for j, n in enumerate(fed))
            done = draft.call(self.now, compute, self.profile.round_trip("draft"))
            # as a worker reports it: every token fed over the passes, the first pass's catch-up included
            observations.append(((sum(fed) + missed) / passes, passes, compute, done - self.now, context))
            drafted_at = max(drafted_at, done)
        self.at(drafted_at, self._verify, lane, batch, ks, observations)

    def _verify(self, lane: Lane, batch: list[Request], ks: list[int], observations: list) -> None:
        d = self.routers[lane.router]
        for tokens_per_pass, passes, compute, round_trip, context in observations:
            d.observe_draft(tokens_per_pass, passes, compute, round_trip, self.now, context)
        tokens, context = sum(k + 1 for k in ks), sum(len(r.committed) for r in batch)
        compute = self.profile.target(tokens, context)
        done = lane.target.call(self.now, compute, self.profile.round_trip("target"))
        self.at(done, self._commit, lane, batch, ks, (tokens, compute, done - self.now, context))

    def _commit(self, lane: Lane, batch: list[Request], ks: list[int],
                cost: tuple[int, float, float, int]) -> None:
        d, target = self.routers[lane.router], lane.target
        d.costs.observe_target(*cost)
        for r, k in zip(batch, ks):
            truth = self.truth[r.id]
            accepted = 0
            while accepted < k and self.rng.random() < truth.arrival.acceptance:
                accepted += 1
            tokens = [TOKEN] * (accepted + 1)
            end = truth.arrival.output_tokens - r.generated  # position of its end-of-text token
            if end < len(tokens):
                tokens[end] = STOP
            if truth.estimate is not None:
                truth.executed += 1
            if k and r.draft is not None:  # the draft keeps its accepted drafts but the k-th (never fed to it)
                r.sent[r.draft] = len(r.committed) + min(accepted, k - 1)
            committed = d.commit(r, k, accepted, tokens, self.now)
            self.streamed += len(committed.tokens)
            if committed.finish_reason:
                self._finish(lane.router, r, truth)
            elif truth.estimate is None and isinstance(d.policy, LAPSSD) and d.policy.perceptible(r):
                # LAPS-SD's T = iterations left (its static key: L_rem / (k*A + 1)) * seconds per iteration;
                # the iterations are what it estimates per request (the seconds are common to the batch)
                iterations = d.policy.static_key(r)
                predicted = max(r.predicted_length - r.generated, 1.0)
                true_length = iterations / predicted * max(truth.arrival.output_tokens - r.generated, 1)
                truth.estimate = (iterations, true_length)
        d.end(batch)
        lane.busy = False
        self.in_iteration[(lane.router, target.address)] -= 1
        self._wake(lane.router, target.address)

    # -- replicas that come and go (autoscaling: specd/sim/autoscale.py) -------------------------

    def add_replica(self, role: str) -> SimReplica:
        """A new replica of `role`, serving from now (each router sees it: no partitions)."""
        replica = SimReplica(role, f"{role}-{len(self.replicas)}")
        self.replicas[replica.address] = replica
        (self.targets if role == "target" else self.drafts).append(replica)
        for i in range(len(self.routers)):
            (self.sees_targets if role == "target" else self.sees_drafts)[i].append(replica)
        if role == "target":
            for i in range(len(self.routers)):
                self.lanes[(i, replica.address)] = [Lane(i, replica) for _ in range(self.config.pipeline_depth)]
                self.in_iteration[(i, replica.address)] = 0
        return replica

    def remove_replica(self, replica: SimReplica) -> None:
        """Scale `replica` down: it takes no new work and its calls under way finish; a target's
        requests move to other targets (prefilled there from their committed tokens, as the live
        router moves them), a draft's requests draft with k = 0 until they are pinned to another."""
        replica.leaving = True
        (self.targets if replica.role == "target" else self.drafts).remove(replica)
        for i in range(len(self.routers)):
            seen = self.sees_targets[i] if replica.role == "target" else self.sees_drafts[i]
            if replica in seen:
                seen.remove(replica)
            if replica.role == "target":
                for lane in self.lanes[(i, replica.address)]:
                    if not lane.busy:
                        self._migrate(lane)

    def _migrate(self, lane: Lane) -> None:
        """Move the waiting requests of a leaving target to the least loaded target left."""
        d, old = self.routers[lane.router], lane.target
        for r in [r for r in d.requests.values() if r.target == old.address and not r.in_flight]:
            new = least_pinned(self.sees_targets[lane.router])
            old.pinned.discard(r.id)
            r.sent.pop(old.address, None)
            d.move(r, new.address)
            new.pinned.add(r.id)
            self.migrated += 1
            self._wake(lane.router, new.address)

    def _finish(self, router: int, r: Request, truth: Truth) -> None:
        self.routers[router].forget(r)
        self.in_system -= 1
        if self.full_until is None and self.in_system < self.slots:
            self.full_until = (self.now, self.streamed)
        for address in (r.target, r.draft):
            if address is not None:
                self.replicas[address].pinned.discard(r.id)
        assert r.first_token is not None and r.finished_at is not None
        self.finished.append(Finished(truth.arrival.kind, r.arrival, r.first_token, r.finished_at, r.generated,
                                      r.proposed, r.accepted, r.iterations))
        if truth.estimate is not None and truth.executed > 0:
            self.estimates.append((*truth.estimate, truth.executed))
        del self.truth[r.id]


class Result:
    """Figures of one simulation run."""

    def __init__(self, sim: Simulation, arrivals: list[Arrival], wall_s: float) -> None:
        done = sim.finished
        latencies = sorted(f.finished - f.arrival for f in done)
        tokens = sum(f.tokens for f in done)
        span = max((f.finished for f in done), default=0.0) - min((a.at for a in arrivals), default=0.0)
        proposed = sum(f.proposed for f in done)
        self.wall_s = wall_s
        self.requests = len(arrivals)
        self.finished = len(done)
        self.rejected = sim.rejected
        self.unfinished = len(arrivals) - len(done) - sim.rejected
        self.tokens = tokens
        self.expected_tokens = sum(a.output_tokens for a in arrivals)
        nan = float("nan")
        self.mean_latency_s = statistics.fmean(latencies) if latencies else nan
        self.p50_latency_s = latencies[len(latencies) // 2] if latencies else nan
        self.p99_latency_s = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else nan
        self.mean_ttft_s = statistics.fmean(f.first_token - f.arrival for f in done) if done else float("nan")
        self.tokens_per_s = tokens / span if span > 0 else 0.0
        self.mean_k = proposed / max(1, sum(f.iterations for f in done))
        self.accepted_per_drafted = sum(f.accepted for f in done) / proposed if proposed else 0.0  # not α
        self.target_utilisation = sum(t.busy_s for t in sim.targets) / (len(sim.targets) * span) if span else 0.0
        self.draft_utilisation = (sum(d.busy_s for d in sim.drafts) / (len(sim.drafts) * span)
                                  if span and sim.drafts else 0.0)
        self.decisions = sim.decisions
        full_s, full_tokens = sim.full_until or (0.0, 0)
        # tokens/s while every batch could be full (a burst's figure: the capacity)
        self.full_batch_tokens_per_s = full_tokens / full_s if full_s > 0 else None
        errors = [abs(e - x) / x for e, _, x in sim.estimates]
        true_length_errors = [abs(e - x) / x for _, e, x in sim.estimates]
        self.estimate_error = statistics.fmean(errors) if errors else None
        self.estimate_error_true_length = statistics.fmean(true_length_errors) if true_length_errors else None

    def row(self) -> dict[str, Any]:
        return {key: (round(value, 5) if isinstance(value, float) else value) for key, value in vars(self).items()}
