"""The benchmark's arithmetic: busy time, stability, the goals (no processes)."""

from __future__ import annotations

import pytest

from specd.bench.serve import (
    Outcome,
    Settings,
    busy_seconds,
    goals,
    is_stable,
    plan,
    router_configs,
    saturated_throughput,
    serving_metrics,
    summarize,
    workload,
)


def outcome(sent: float, end: float, tokens: int = 10) -> Outcome:
    return Outcome(sent=sent, end=end, ttft=0.1, tokens=tokens, proposed=8, accepted=4, iterations=4)


def test_busy_time_is_the_union_of_request_intervals():
    assert busy_seconds([outcome(0, 2), outcome(1, 3), outcome(5, 6)]) == pytest.approx(4.0)


def test_saturated_throughput_stops_when_batches_can_no_longer_be_full():
    outcomes = [Outcome(0, 2, 0.1, 4, 0, 0, 2, chunks=[(1, 2), (2, 2)]),
                Outcome(0, 4, 0.1, 6, 0, 0, 3, chunks=[(1, 1), (2, 1), (4, 4)]),
                Outcome(0, 9, 0.1, 9, 0, 0, 9, chunks=[(5, 9)])]
    # three slots: full until the first request ends at t=2, 2 + 2 + 1 + 1 tokens streamed by then
    assert saturated_throughput(outcomes, slots=3) == pytest.approx(6 / 2)
    # two slots: full until the second ends at t=4 (the lone third one runs alone after that)
    assert saturated_throughput(outcomes, slots=2) == pytest.approx(10 / 4)


def test_summary_pools_latencies_and_sums_times_over_runs():
    r = summarize("fcfs", "none", 2.0, [[outcome(0, 1), outcome(0, 3)], [outcome(0, 2)]])
    assert r["requests"] == 3 and r["mean_latency_s"] == pytest.approx(2.0)
    assert r["tokens_per_s"] == pytest.approx(30 / 5) and r["mean_k"] == 2.0
    assert r["offered_tokens_per_s"] == pytest.approx(20.0)
    assert r["goodput_tokens_per_s"] == pytest.approx(30 / 5)  # busy 2 s + 3 s (each run's own)
    assert r["short_mean_latency_s"] == pytest.approx(2.0) and r["long_mean_latency_s"] is None
    assert not is_stable(r, {"none": 20.0})  # 2/s x 10 tokens = 20 tokens/s offered, not below capacity
    assert is_stable(r, {"none": 25.0})


def test_serving_metrics_use_the_common_benchmarks_definitions():
    # request A: sent 0, first chunk at 0.5 (TTFT 500 ms), 5 tokens in chunks at 0.5, 1.0, 2.5, ends 2.5
    a = Outcome(0.0, 2.5, 0.5, 5, 0, 0, 3, chunks=[(0.5, 1), (1.0, 2), (2.5, 2)])
    # request B: sent 1, TTFT 100 ms, one token: no TPOT, no ITL
    b = Outcome(1.0, 1.1, 0.1, 1, 0, 0, 1, chunks=[(1.1, 1)])
    m = serving_metrics([[a, b]], makespan=2.5, slo_ttft_ms=200)
    assert m["mean_ttft_ms"] == pytest.approx(300) and m["median_ttft_ms"] == pytest.approx(300)
    assert m["mean_tpot_ms"] == pytest.approx((2500 - 500) / 4)  # (e2e - TTFT) / (tokens - 1)
    assert m["mean_itl_ms"] == pytest.approx((500 + 1500) / 2) and m["p99_itl_ms"] == pytest.approx(1490)
    assert m["mean_e2el_ms"] == pytest.approx((2500 + 100) / 2)
    assert m["request_throughput"] == pytest.approx(2 / 2.5) and m["output_throughput"] == pytest.approx(6 / 2.5)
    assert m["request_goodput"] == pytest.approx(1 / 2.5)  # only B's TTFT is within 200 ms
    assert serving_metrics([[a, b]], 2.5)["request_goodput"] == m["request_throughput"]  # no SLO: every request


def test_rates_are_loads_of_each_modes_capacity():
    s = Settings(loads=[0.5, 0.9], compare_speculations=["goodput", "none"], speculations=["none", "goodput"])
    runs = plan(s, {"goodput": 400.0, "none": 200.0}, mean_tokens=40.0)
    # goodput: 5/s and 9/s (policies, and the speculation modes under laps-sd); none: 2.5/s and 4.5/s (policies)
    assert runs == {2.5: [("fcfs", "none"), ("laps-sd", "none")], 4.5: [("fcfs", "none"), ("laps-sd", "none")],
                    5.0: [("fcfs", "goodput"), ("laps-sd", "goodput"), ("laps-sd", "none")],
                    9.0: [("fcfs", "goodput"), ("laps-sd", "goodput"), ("laps-sd", "none")]}
    absolute = plan(Settings(rates=[3.0], speculations=["fixed:2"]), {"goodput": 400.0}, mean_tokens=40.0)
    assert absolute == {3.0: [("fcfs", "goodput"), ("laps-sd", "goodput"), ("laps-sd", "fixed:2")]}
    assert router_configs(s) == [("fcfs", "goodput"), ("fcfs", "none"), ("laps-sd", "goodput"), ("laps-sd", "none")]


def test_goals_compare_at_the_highest_stable_rate():
    def row(policy, spec, rate, latency):
        return {"policy": policy, "speculation": spec, "rate": rate, "mean_latency_s": latency,
                "offered_tokens_per_s": rate * 10, "load": rate * 10 / 30}

    results = [row("fcfs", "goodput", 1, 1.0), row("laps-sd", "goodput", 1, 0.9),
               row("fcfs", "goodput", 2, 2.0), row("laps-sd", "goodput", 2, 1.0),  # 2/s: 20 offered < 30
               row("fcfs", "goodput", 4, 9.0), row("laps-sd", "goodput", 4, 3.0),  # 4/s: 40 offered > 30
               row("laps-sd", "none", 2, 2.2), row("laps-sd", "fixed:2", 2, 0.98)]
    g = goals(results, {"goodput": 30.0}, Settings(compare_speculations=["goodput"]))
    [policy] = g["laps_sd_vs_fcfs"]
    assert (policy["rate"], policy["ratio"], policy["met"]) == (2, 0.5, True)
    assert policy["fcfs_stable_rates"] == [1, 2] and len(policy["ratios_by_load"]) == 3
    at_2 = next(r for r in g["goodput_speculation"] if r["rate"] == 2)
    assert at_2["best_fixed"] == "fixed:2" and at_2["met_vs_fixed"] and at_2["met_vs_none"]
    unstable = goals(results, {"goodput": 5.0}, Settings(compare_speculations=["goodput"]))
    assert unstable["laps_sd_vs_fcfs"][0]["met"] is False  # no stable rate: nothing to claim


def test_workload_mix_is_exact_and_heavy_tailed():
    items = workload(Settings(requests=400), seed=0)
    assert sum(i.kind == "code" for i in items) == 200
    lengths = sorted(i.max_new_tokens for i in items)
    median, shape = lengths[200], Settings().output_tokens
    assert 0.8 * shape.median <= median <= 1.25 * shape.median
    # a heavy tail: the mean well above the median, and "long" marks exactly the tail beyond 3x it
    assert sum(lengths) / len(lengths) > 1.4 * median
    assert [i.long for i in items] == [i.max_new_tokens > 3 * shape.median for i in items]
    assert 0.05 < sum(i.long for i in items) / len(items) < 0.25
    assert all(shape.low <= n <= shape.high for n in lengths)
    assert workload(Settings(requests=400), seed=0) == items  # a seed replays its workload


def test_bench_serve_prints_the_issue_keys_end_to_end(models):
    """`specd bench serve --json` on a real local stack (tiny models, a tiny sweep)."""
    import json
    import subprocess
    import sys

    target, draft = models
    done = subprocess.run([sys.executable, "-m", "specd.cli", "bench", "serve", "--json", "--requests", "6",
                           "--repeats", "1", "--loads", "0.5", "--speculations", "off", "--target-model", str(target),
                           "--draft-model", str(draft)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    keys = {"policy", "speculation", "rate", "mean_latency_s", "p50_latency_s", "p99_latency_s", "mean_ttft_s",
            "tokens_per_s", "goodput_tokens_per_s", "mean_k", "requests", "load",
            *(f"{stat}_{name}_ms" for stat in ("mean", "median", "p99") for name in ("ttft", "tpot", "itl", "e2el")),
            "request_throughput", "output_throughput", "request_goodput"}
    assert {(r["policy"], r["speculation"]) for r in report["results"]} == {
        ("fcfs", "goodput"), ("laps-sd", "goodput"), ("laps-sd", "none")}
    for r in report["results"]:
        assert keys <= set(r) and r["requests"] == 6 and r["mean_latency_s"] > 0
    assert report["capacity_tokens_per_s"]["goodput"] > 0
    assert report["goals"]["laps_sd_vs_fcfs"][0]["speculation"] == "goodput"
    assert report["grpc_overhead"]["target_step_s"] > 0


def test_goals_are_medians_over_the_repeats():
    """One noisy repeat does not decide a goal: the median of the per-repeat ratios does."""
    def row(policy, spec, by_repeat):
        return {"policy": policy, "speculation": spec, "rate": 1, "mean_latency_s": sum(by_repeat) / len(by_repeat),
                "mean_latency_s_by_repeat": by_repeat, "offered_tokens_per_s": 10, "load": 0.5}

    results = [row("fcfs", "goodput", [1.0, 1.0, 1.0]), row("laps-sd", "goodput", [0.7, 0.7, 3.0]),
               row("laps-sd", "none", [1.0, 1.0, 1.0])]
    g = goals(results, {"goodput": 30.0}, Settings(compare_speculations=["goodput"]))
    [policy] = g["laps_sd_vs_fcfs"]
    assert policy["ratio"] > 1 and policy["median_ratio"] == 0.7 and policy["spread"] == [0.7, 3.0]
    assert policy["met"]  # the pooled mean (1.47) would have said no because of one repeat
    [speculation] = g["goodput_speculation"]
    assert speculation["vs_none_median"] == 0.7 and speculation["met_vs_none"] is True
