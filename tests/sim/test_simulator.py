"""The scheduling simulator (specd/sim): it runs the router's own decision code on a virtual clock.

Runs are small (a few hundred requests on one simulated replica) and deterministic per seed.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from specd import cli
from specd.router import policies, speculation
from specd.router.config import RouterConfig
from specd.sim.engine import Setup, Simulation
from specd.sim.experiments import capacity, decision_time, simulate
from specd.sim.profiles import NAMED
from specd.sim.workloads import MIXES, Workload

PROFILE = NAMED["h100-70b-tp8"]
CONFIG = RouterConfig(policy="fcfs", speculation="goodput", max_batch_size=8, max_queued_requests=10**6)


def _run(config: RouterConfig, workload: Workload, rate: float, seed: int = 0) -> dict:
    return simulate(Setup(config, PROFILE, seed=seed), workload, rate)


@pytest.fixture(scope="module")
def paper() -> Workload:
    return Workload(MIXES["paper"], 300, seed=3)


@pytest.fixture(scope="module")
def fcfs_capacity(paper: Workload) -> float:
    return capacity(Setup(CONFIG, PROFILE), paper)


def test_every_request_ends_at_its_own_length(paper):
    """Conservation: each request streams exactly its true length, through the router's commit (the
    simulated end-of-text token stops it); none is lost, none generates more."""
    arrivals = paper.arrivals(2.0)
    sim = Simulation(Setup(replace(CONFIG, policy="laps-sd"), PROFILE))
    result = sim.run(arrivals)
    assert result.finished == len(arrivals) and result.unfinished == 0 and result.rejected == 0
    assert sorted((f.arrival, f.tokens) for f in sim.finished) == sorted((a.at, a.output_tokens) for a in arrivals)
    assert result.tokens == result.expected_tokens
    assert all(f.accepted <= f.proposed for f in sim.finished)
    assert not sim.routers[0].requests  # every request retired


def test_same_seed_same_figures(paper):
    first, second = _run(CONFIG, paper, 2.0), _run(CONFIG, paper, 2.0)
    first.pop("wall_s"), second.pop("wall_s")
    assert first == second
    other = _run(CONFIG, paper, 2.0, seed=1)  # the acceptance draws change with the seed
    assert other["mean_latency_s"] != first["mean_latency_s"]


def test_queue_full_is_refused_as_the_router_refuses(paper):
    small = replace(CONFIG, max_queued_requests=5)
    row = _run(small, paper, 1e6)  # a burst: at most 5 admitted at once
    assert row["rejected"] > 0 and row["finished"] + row["rejected"] == paper.requests


@pytest.mark.parametrize("seed", [3, 4])
def test_policies_at_high_load(seed):
    """Heavy-tailed lengths at 98% of capacity: attained-service policies beat arrival order."""
    workload = Workload(MIXES["paper"], 400, seed=seed)
    rate = 0.98 * capacity(Setup(CONFIG, PROFILE), workload)
    latency = {name: _run(replace(CONFIG, policy=name), workload, rate)["mean_latency_s"]
               for name in ("fcfs", "las", "laps-sd")}
    assert latency["laps-sd"] < 0.95 * latency["fcfs"], latency
    assert latency["las"] < latency["fcfs"], latency


def test_the_simulator_runs_the_routers_policy_code(paper, fcfs_capacity, monkeypatch):
    """Control: reversing the router's fcfs order (last come, first served) changes the simulated
    latencies, so the simulator orders requests with the router's own policy classes."""
    rate = 0.95 * fcfs_capacity
    fcfs = _run(CONFIG, paper, rate)
    monkeypatch.setattr(policies.FCFS, "static_key", lambda self, r: -r.arrival)
    reversed_ = _run(CONFIG, paper, rate)
    assert reversed_["mean_latency_s"] != fcfs["mean_latency_s"]
    assert reversed_["tokens"] == fcfs["tokens"]


def test_the_simulator_runs_the_routers_speculation_control(paper, monkeypatch):
    assert _run(CONFIG, paper, 2.0)["mean_k"] > 1
    monkeypatch.setattr(speculation.SpeculationControl, "choose", lambda self, batch, drafting, overlapped=False:
                        [0] * len(batch))
    row = _run(CONFIG, paper, 2.0)
    assert row["mean_k"] == 0 and row["tokens"] == row["expected_tokens"]


def test_goodput_speculation_against_none_and_fixed(paper):
    """SmartSpec's rule at a light and a heavy load (fractions of the capacity without speculation):
    goodput k is no slower than no speculation nor than the best of fixed k = 2 and 8."""
    off_capacity = capacity(Setup(CONFIG.with_speculation("none"), PROFILE), paper)
    for load in (0.2, 0.9):
        rows = {mode: _run(CONFIG.with_speculation(mode), paper, load * off_capacity)["mean_latency_s"]
                for mode in ("none", "fixed:2", "fixed:8", "goodput")}
        assert rows["goodput"] <= rows["none"], (load, rows)
        assert rows["goodput"] <= 1.02 * min(rows["fixed:2"], rows["fixed:8"]), (load, rows)
        assert rows["fixed:8"] < rows["none"], (load, rows)  # this pair's drafts are cheap: speculation pays


def test_decision_time_is_reported_for_a_full_batch():
    row = decision_time(replace(CONFIG, policy="laps-sd"), 1000, repeats=20)
    assert row["batch"] == CONFIG.max_batch_size and row["decision_us"] > 0
    assert row["decision_us"] == pytest.approx(row["pick_us"] + row["choose_us"] + row["requeue_us"], abs=0.5)


def test_bench_simulate_prints_the_named_keys(capsys):
    code = cli.main(["bench", "simulate", "--json", "--requests", "120", "--loads", "0.9",
                     "--speculation-loads", "0.5", "--speculations", "none,fixed:2,goodput",
                     "--decision-queued", "100", "--seeds", "1", "--jobs", "1"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("laps_sd_vs_fcfs", "goodput_vs_best_fixed_max", "goodput_vs_off_max", "validation_max_error",
                "estimate_error", "capacity_rps"):
        assert key in report, key
    assert {row["policy"] for row in report["rows"]["policies"]} == {"fcfs", "las", "sjf", "laps-sd"}
    assert {row["speculation"] for row in report["rows"]["speculation"]} == {"none", "fixed:2", "goodput"}
    assert 0 < report["laps_sd_vs_fcfs"] < 2
