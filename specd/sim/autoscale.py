"""`specd bench autoscale`: fixed pools, queue-only autoscaling and speculation-aware autoscaling
on a load that rises and falls, in the simulator (docs/autoscaling.md).

The autoscalers poll the simulated router's own `Decisions.stats` (the Stats RPC's message) every
`poll_s` and decide with `operator/autoscaling.py`. A replica added serves after `startup_s`
(scheduling, image, weights) and costs replica-seconds from its decision; a replica removed takes
no new work, its calls under way finish, and its requests move (targets: prefilled elsewhere from
their committed tokens; drafts: k = 0 until re-pinned), as the live router does.

- fixed: both pools at their maximum, always (provisioned for the peak);
- queue-only: the target pool on queue per replica (the same rule), the draft pool in proportion
  to it (what serving systems without speculation figures do);
- speculation-aware: `Autoscaler` for both pools.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from specd.operator.autoscaling import Autoscaler, AutoscalingPolicy, Figures, PoolLimits
from specd.router.config import RouterConfig
from specd.router.replicas import least_pinned
from specd.sim.engine import Setup, SimReplica, Simulation
from specd.sim.profiles import Profile
from specd.sim.workloads import RISE_AND_FALL, Arrival, Workload


@dataclass(frozen=True)
class Bench:
    profile: Profile
    config: RouterConfig
    policy: AutoscalingPolicy
    peak_rate: float  # requests/s at share 1.0
    mix: dict[str, float]
    phases: tuple[tuple[float, float], ...] = RISE_AND_FALL
    startup_s: float = 60.0
    poll_s: float = 15.0
    seed: int = 0


def arrivals(bench: Bench) -> list[Arrival]:
    """The workload's requests on a piecewise-constant rate (a Poisson process whose clock is
    warped: unit-rate arrival u lands where the expected count reaches u)."""
    ends, expected, t, n = [], [], 0.0, 0.0
    for seconds, share in bench.phases:
        t, n = t + seconds, n + seconds * share * bench.peak_rate
        ends.append(t)
        expected.append(n)
    unit = Workload(bench.mix, int(n * 1.2) + 50, bench.seed).arrivals(1.0)
    out = []
    for a in unit:
        i = bisect.bisect_right(expected, a.at)
        if i == len(expected):
            break
        rate = bench.phases[i][1] * bench.peak_rate
        at = ends[i] - (expected[i] - a.at) / rate
        out.append(dataclasses.replace(a, at=at))
    return out


class Fleet:
    """The pools of one run: replicas serving, starting and gone, and their replica-seconds."""

    def __init__(self, sim: Simulation, startup_s: float) -> None:
        self.sim = sim
        self.startup_s = startup_s
        self.since: dict[SimReplica, float] = {r: 0.0 for r in sim.targets + sim.drafts}
        self.starting = {"target": 0, "draft": 0}
        self.seconds = {"target": 0.0, "draft": 0.0}  # of replicas gone
        self.started_at: dict[str, list[float]] = {"target": [], "draft": []}  # of the replicas starting
        self.range = {"target": [len(sim.targets)] * 2, "draft": [len(sim.drafts)] * 2}
        self.changes = {"target": 0, "draft": 0}

    def serving(self, role: str) -> list[SimReplica]:
        return self.sim.targets if role == "target" else self.sim.drafts

    def count(self, role: str) -> int:
        return len(self.serving(role)) + self.starting[role]

    def scale(self, role: str, replicas: int) -> None:
        now, delta = self.sim.now, replicas - self.count(role)
        if delta:
            self.changes[role] += 1
        for _ in range(max(delta, 0)):
            self.starting[role] += 1
            self.started_at[role].append(now)
            self.sim.at(now + self.startup_s, self._ready, role)
        for _ in range(max(-delta, 0)):
            if self.starting[role]:  # a pod still starting goes first: it serves nothing yet
                self.starting[role] -= 1
                self.seconds[role] += now - self.started_at[role].pop()
                continue
            replica = least_pinned(self.serving(role))  # the fewest requests to move
            self.sim.remove_replica(replica)
            self.seconds[role] += now - self.since.pop(replica)
        low, high = self.range[role]
        self.range[role] = [min(low, replicas), max(high, replicas)]

    def _ready(self, role: str) -> None:
        if not self.starting[role]:
            return  # cancelled while starting
        self.starting[role] -= 1
        self.since[self.sim.add_replica(role)] = self.started_at[role].pop(0)

    def replica_seconds(self, role: str, end: float) -> float:
        live = sum(end - t for r, t in self.since.items() if r.role == role)
        return self.seconds[role] + live + sum(end - t for t in self.started_at[role])


Decide = Callable[[Figures], tuple[int, int]]


def speculation_aware(policy: AutoscalingPolicy, targets: int, drafts: int) -> Decide:
    scaler = Autoscaler(policy, targets, drafts)

    def decide(figures: Figures) -> tuple[int, int]:
        d = scaler.observe(figures)
        return d.target_replicas, d.draft_replicas

    return decide


def queue_only(policy: AutoscalingPolicy, targets: int, drafts_per_target: float) -> Decide:
    """The target rule alone; drafts = ceil(targets × drafts_per_target) within the draft bounds."""
    scaler = Autoscaler(policy, targets, policy.draft.clamp(math.ceil(targets * drafts_per_target)))

    def decide(figures: Figures) -> tuple[int, int]:
        target = scaler.observe(figures).target_replicas
        scaler.draft_replicas = policy.draft.clamp(math.ceil(target * drafts_per_target))
        return target, scaler.draft_replicas

    return decide


def run(bench: Bench, config: str) -> dict[str, Any]:
    """One configuration on the bench's load: `fixed` (both pools at their maxima),
    `speculation-aware`, or `queue-only:R` (R drafts per target); autoscaled pools start at their
    minima (at least one draft)."""
    p = bench.policy
    if config == "fixed":
        start, decide = (p.target.max_replicas, p.draft.max_replicas), None
    else:
        start = (p.target.min_replicas, max(p.draft.min_replicas, 1))
        decide = (speculation_aware(p, *start) if config == "speculation-aware"
                  else queue_only(p, start[0], float(config.removeprefix("queue-only:"))))
    sim = Simulation(Setup(bench.config, bench.profile, targets=start[0], drafts=start[1], seed=bench.seed))
    fleet = Fleet(sim, bench.startup_s)
    work = arrivals(bench)
    last_arrival = work[-1].at

    def poll(decide: Decide) -> None:
        stats = sim.routers[0].stats(len(sim.targets), len(sim.drafts))
        targets, drafts = decide(Figures.from_stats(stats, sim.now))
        fleet.scale("target", targets)
        fleet.scale("draft", drafts)
        if sim.now < last_arrival or sim.in_system:
            sim.at(sim.now + bench.poll_s, poll, decide)

    if decide is not None:
        sim.at(bench.poll_s, poll, decide)
    result = sim.run(work)
    end = max((f.finished for f in sim.finished), default=0.0)
    return {
        "config": config, "requests": result.requests, "finished": result.finished,
        "rejected_requests": result.rejected, "failed_requests": result.requests - result.finished,
        "lost_tokens": result.expected_tokens - result.tokens, "migrated_requests": sim.migrated,
        "goodput_tokens_per_s": round(result.tokens_per_s, 2), "mean_latency_s": round(result.mean_latency_s, 4),
        "p99_latency_s": round(result.p99_latency_s, 4), "mean_ttft_s": round(result.mean_ttft_s, 4),
        "mean_k": round(result.mean_k, 3),
        "target_replica_seconds": round(fleet.replica_seconds("target", end), 1),
        "draft_replica_seconds": round(fleet.replica_seconds("draft", end), 1),
        "target_replicas_range": fleet.range["target"], "draft_replicas_range": fleet.range["draft"],
        "target_scalings": fleet.changes["target"], "draft_scalings": fleet.changes["draft"],
        "wall_s": round(result.wall_s, 1)}


def _run(job: tuple[Bench, str]) -> dict[str, Any]:
    return run(*job)


def default_policy(targets: int, drafts: int, queue_per_target: float) -> AutoscalingPolicy:
    """The resource's defaults (specd.contract) with the bench's pool sizes and queue aim."""
    policy = AutoscalingPolicy.from_spec({"autoscaling": {"enabled": True}})
    assert policy is not None
    return dataclasses.replace(policy, target=PoolLimits(1, targets), draft=PoolLimits(0, drafts),
                               queue_per_target=queue_per_target)


def queue_only_at(rows: list[dict[str, Any]], draft_replica_seconds: float) -> tuple[float, list[str]] | None:
    """Queue-only's mean latency at `draft_replica_seconds`: linear between the two runs whose draft
    replica-seconds bracket it (the curve of latency against drafting capacity bought), with those
    runs' configs; None when it lies outside the runs' range (no extrapolation)."""
    curve = sorted(rows, key=lambda r: r["draft_replica_seconds"])
    for low, high in zip(curve, curve[1:]):
        x0, x1 = low["draft_replica_seconds"], high["draft_replica_seconds"]
        if x0 <= draft_replica_seconds <= x1:
            share = (draft_replica_seconds - x0) / (x1 - x0) if x1 > x0 else 0.0
            latency = low["mean_latency_s"] + share * (high["mean_latency_s"] - low["mean_latency_s"])
            return latency, [low["config"], high["config"]]
    return None


def compare(bench: Bench, ratios: tuple[float, ...] = (0.5, 1.0, 2.0), jobs: int = 1) -> dict[str, Any]:
    """Fixed, speculation-aware, and queue-only at each draft:target ratio. Queue-only's targets follow
    the same rule as speculation-aware's (their target replica-seconds are reported side by side);
    its mean latency at equal draft replica-seconds is interpolated on its runs' latency curve
    (`queue_only_at`), so neither side is compared with a point that bought more or less drafting."""
    configs = ["fixed", "speculation-aware", *(f"queue-only:{r:g}" for r in ratios)]
    work = [(bench, c) for c in configs]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            rows = list(pool.map(_run, work))
    else:
        rows = [_run(job) for job in work]
    fixed, aware, queue = rows[0], rows[1], rows[2:]
    matched = queue_only_at(queue, aware["draft_replica_seconds"])
    queue_target_s = sum(q["target_replica_seconds"] for q in queue) / len(queue)
    return {
        "draft_replica_seconds_vs_fixed": round(aware["draft_replica_seconds"] / fixed["draft_replica_seconds"], 3),
        "target_replica_seconds_vs_fixed": round(aware["target_replica_seconds"] / fixed["target_replica_seconds"], 3),
        "mean_latency_vs_fixed": round(aware["mean_latency_s"] / fixed["mean_latency_s"], 3),
        # None: speculation-aware's draft replica-seconds lie outside queue-only's runs (widen --ratios)
        "mean_latency_vs_queue_only": round(aware["mean_latency_s"] / matched[0], 3) if matched else None,
        "queue_only_mean_latency_s_at_equal_draft_replica_seconds": round(matched[0], 4) if matched else None,
        "queue_only_bracket": matched[1] if matched else [],
        "target_replica_seconds_vs_queue_only": round(aware["target_replica_seconds"] / queue_target_s, 3),
        "failed_requests": sum(r["failed_requests"] for r in rows),
        "lost_tokens": sum(r["lost_tokens"] for r in rows),
        "settings": {"profile": bench.profile.name, "mix": bench.mix, "peak_rate": round(bench.peak_rate, 4),
                     "phases": [list(p) for p in bench.phases], "startup_s": bench.startup_s,
                     "poll_s": bench.poll_s, "seed": bench.seed, "max_batch_size": bench.config.max_batch_size,
                     "router_policy": bench.config.policy, "autoscaling": dataclasses.asdict(bench.policy)},
        "rows": rows,
    }
