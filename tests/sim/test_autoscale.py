"""`specd bench autoscale` on a small load: every request finishes with all its tokens through
scale-ups and drains, runs are deterministic per seed, and the pools stay within their bounds."""

from __future__ import annotations

import dataclasses

import pytest

from specd.router.config import RouterConfig
from specd.sim import autoscale
from specd.sim.profiles import NAMED
from specd.sim.workloads import MIXES

POLICY = dataclasses.replace(autoscale.default_policy(targets=3, drafts=2, queue_per_target=4.0),
                             scale_up_window_s=4.0, scale_down_window_s=8.0)
BENCH = autoscale.Bench(NAMED["h100-70b-tp8"], RouterConfig(max_batch_size=8, max_queued_requests=10_000), POLICY,
                        peak_rate=6.0, mix=MIXES["chat"], phases=((10, 0.2), (20, 1.0), (20, 0.1)),
                        startup_s=3.0, poll_s=1.0, seed=3)


@pytest.fixture(scope="module")
def rows():
    return {config: autoscale.run(BENCH, config) for config in ("fixed", "speculation-aware", "queue-only:1")}


def test_every_request_finishes_with_all_its_tokens(rows):
    for row in rows.values():
        assert row["requests"] == row["finished"] > 50
        assert row["failed_requests"] == row["lost_tokens"] == 0


def test_a_target_and_a_draft_leaving_under_load_lose_nothing():
    from specd.sim.engine import Setup, Simulation
    from specd.sim.workloads import Workload

    sim = Simulation(Setup(BENCH.config, BENCH.profile, targets=2, drafts=2, seed=1))
    work = Workload(MIXES["chat"], 60, seed=1).arrivals(20.0)
    leaving_target, leaving_draft = sim.targets[0], sim.drafts[0]
    sim.at(2.0, sim.remove_replica, leaving_target)  # in the middle of the burst
    sim.at(2.0, sim.remove_replica, leaving_draft)
    result = sim.run(work)
    assert sim.migrated > 0  # requests were on it and moved
    assert result.finished == len(work) and result.tokens == result.expected_tokens
    assert sim.targets == [t for t in sim.targets if t is not leaving_target] and len(sim.targets) == 1
    assert not leaving_target.pinned and not leaving_draft.pinned
    assert leaving_target.free_at < max(f.finished for f in sim.finished)  # it took no work after draining


def test_autoscaled_pools_move_within_their_bounds(rows):
    for config in ("speculation-aware", "queue-only:1"):
        row = rows[config]
        assert row["target_scalings"] >= 2  # up with the load and down after it
        low, high = row["target_replicas_range"]
        assert POLICY.target.min_replicas <= low < high <= POLICY.target.max_replicas
        low, high = row["draft_replicas_range"]
        assert POLICY.draft.min_replicas <= low <= high <= POLICY.draft.max_replicas
    fixed = rows["fixed"]
    assert fixed["target_replicas_range"] == [3, 3] and fixed["target_scalings"] == 0
    # fixed pools pay for the peak all the time: more target replica-seconds than an autoscaled pool
    assert fixed["target_replica_seconds"] > rows["speculation-aware"]["target_replica_seconds"]


def test_runs_are_deterministic_per_seed(rows):
    again = autoscale.run(BENCH, "speculation-aware")
    first = rows["speculation-aware"]
    assert {k: v for k, v in again.items() if k != "wall_s"} == {k: v for k, v in first.items() if k != "wall_s"}
    other = autoscale.run(dataclasses.replace(BENCH, seed=4), "speculation-aware")
    assert other["mean_latency_s"] != first["mean_latency_s"]  # the control: another seed, another run


def test_the_load_rises_and_falls_as_its_phases_say():
    at = [a.at for a in autoscale.arrivals(BENCH)]
    counts = [sum(start <= t < start + seconds for t in at)
              for start, seconds in ((0, 10), (10, 20), (30, 20))]
    expected = [seconds * share * BENCH.peak_rate for seconds, share in BENCH.phases]
    assert counts[1] > 3 * counts[0] and counts[1] > 3 * counts[2]
    assert all(abs(c - e) < 4 * e ** 0.5 + 2 for c, e in zip(counts, expected))  # Poisson: within 4 sigma


def test_queue_only_latency_is_read_off_its_curve_at_equal_draft_replica_seconds():
    def row(config: str, draft_s: float, latency: float) -> dict:
        return {"config": config, "draft_replica_seconds": draft_s, "mean_latency_s": latency}

    curve = [row("queue-only:2", 700.0, 6.0), row("queue-only:0.5", 300.0, 10.0), row("queue-only:1", 500.0, 7.0)]
    latency, bracket = autoscale.queue_only_at(curve, 400.0)
    assert latency == pytest.approx(8.5) and bracket == ["queue-only:0.5", "queue-only:1"]  # halfway, sorted
    assert autoscale.queue_only_at(curve, 700.0) == (6.0, ["queue-only:1", "queue-only:2"])
    assert autoscale.queue_only_at(curve, 250.0) is None  # outside the runs: no extrapolation
