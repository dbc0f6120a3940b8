"""The benchmark's arithmetic: busy time, stability, the goals (no processes)."""

from __future__ import annotations

import pytest

from specd.router.bench import Outcome, Settings, busy_seconds, goals, is_stable, summarize, workload


def outcome(sent: float, end: float, tokens: int = 10) -> Outcome:
    return Outcome(sent=sent, end=end, ttft=0.1, tokens=tokens, proposed=8, accepted=4, iterations=4)


def test_busy_time_is_the_union_of_request_intervals():
    assert busy_seconds([outcome(0, 2), outcome(1, 3), outcome(5, 6)]) == pytest.approx(4.0)


def test_summary_pools_latencies_and_sums_times_over_runs():
    r = summarize("fcfs", "off", 2.0, [[outcome(0, 1), outcome(0, 3)], [outcome(0, 2)]])
    assert r["requests"] == 3 and r["mean_latency_s"] == pytest.approx(2.0)
    assert r["tokens_per_s"] == pytest.approx(30 / 5) and r["mean_k"] == 2.0
    assert r["offered_tokens_per_s"] == pytest.approx(20.0)
    assert r["goodput_tokens_per_s"] == pytest.approx(30 / 5)  # busy 2 s + 3 s (each run's own)
    assert not is_stable(r)  # 2/s x 10 tokens = 20 tokens/s offered > 6 served per busy second
    assert is_stable({**r, "rate": 0.5})


def test_goals_compare_at_the_highest_stable_rate():
    def row(policy, spec, rate, latency, served):
        return {"policy": policy, "speculation": spec, "rate": rate, "mean_latency_s": latency,
                "generated_tokens": 100, "requests": 10, "goodput_tokens_per_s": served}

    results = [row("fcfs", "goodput", 1, 1.0, 50), row("laps-sd", "goodput", 1, 0.9, 50),
               row("fcfs", "goodput", 2, 2.0, 30), row("laps-sd", "goodput", 2, 1.0, 30),  # 2/s: 20 offered <= 30
               row("fcfs", "goodput", 4, 9.0, 30), row("laps-sd", "goodput", 4, 3.0, 30),  # 4/s: 40 offered > 30
               row("laps-sd", "off", 2, 2.2, 30), row("laps-sd", "fixed:2", 2, 0.98, 30)]
    s = Settings(rates=[1, 2, 4], compare_speculations=["goodput"])
    g = goals(results, s)
    [policy] = g["laps_sd_vs_fcfs"]
    assert (policy["rate"], policy["ratio"], policy["met"]) == (2, 0.5, True)
    at_2 = next(r for r in g["goodput_speculation"] if r["rate"] == 2)
    assert at_2["best_fixed"] == "fixed:2" and at_2["met_vs_fixed"] and at_2["met_vs_off"]


def test_workload_mix_is_exact():
    items = workload(Settings(rates=[1], requests=20, long_fraction=0.25), seed=0)
    assert sum(i.kind == "code" for i in items) == 10
    assert sum(i.max_new_tokens >= 96 for i in items) == 5
