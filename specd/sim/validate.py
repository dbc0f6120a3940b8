"""The simulator against the real stack: replay a `specd bench serve --json` report's runs (same
workload items, seeds, rates and router settings) on a calibrated profile, and compare each
configuration's mean latency with the measured one.

The step costs replayed are, by default, those the configuration's own router met during its runs
(`step_costs`: its goodput cost model sampled while it served, bench.serve.mean_costs): on a shared
machine the workers' costs under the benchmark's load (routers, client, draft and target on the
same cores) differ from the calibration's, which drives the two workers alone. Prefill, which the
router does not time, keeps the calibrated cost.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
from pathlib import Path
from typing import Any

from specd.errors import SpecdError
from specd.router.config import RouterConfig
from specd.sim.engine import Setup, Simulation
from specd.sim.profiles import PassCost, Profile
from specd.sim.workloads import Arrival


def acceptance_from_usage(accepted: int, proposed: int, iterations: int) -> float | None:
    """The per-token acceptance rate a whose expected accepted drafts per iteration at the request's
    mean k, a (1 - a^k) / (1 - a), equals its measured one (None when it never drafted)."""
    if not proposed or not iterations:
        return None
    k, per_iteration = proposed / iterations, accepted / iterations

    def expected(a: float) -> float:
        return k if a >= 1.0 else a * (1 - a ** k) / (1 - a)

    low, high = 0.0, 1.0  # expected() rises with a: bisection
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if expected(middle) < per_iteration else (low, middle)
    return round((low + high) / 2, 4)


COSTS = ("run", "calibrated")  # the step costs replayed: the run's own (measured under its load) or the calibration's
MATCH_ROUNDS = 4  # simulations of a run that set its round trips (the error shrinks about tenfold per round)


def in_run_profile(calibrated: Profile, step_costs: dict[str, Any]) -> Profile:
    """`calibrated` with the passes and round trips a configuration's router measured during its runs."""
    return dataclasses.replace(
        calibrated, name="in-run", target=PassCost(**step_costs["target"]), draft=PassCost(**step_costs["draft"]),
        rpc_s=step_costs["target_overhead_s"], draft_rpc_s=step_costs["draft_overhead_s"],
        source=f"the router's cost model sampled {step_costs['samples']} times during the run; "
               f"prefill from {calibrated.source}")


def simulate(setup: Setup, arrivals: list[Arrival], poll_s: float,
             warm: tuple[float, float]) -> tuple[Simulation, tuple[float, float]]:
    """Run `arrivals`; with the simulated router's typical round-trip excess (target, draft: the
    EMAs of CostModel, waits included, which a replay can match where the queue-free minimum the
    router decides on cannot) averaged over samples taken as `specd bench serve` takes the real
    router's (bench.serve.poll_costs): every `poll_s` while requests are in the system, and at the
    end. They start at `warm`: the real router starts each run with what the runs before left it."""
    sim = Simulation(setup)
    costs, samples = sim.routers[0].costs, []
    costs.target_overhead_mean, costs.draft_overhead_mean = warm

    def sample() -> None:
        if sim.in_system:
            samples.append((costs.target_overhead_mean, costs.draft_overhead_mean))
        if sim.in_system or sim.now < arrivals[-1].at:
            sim.at(sim.now + poll_s, sample)

    sim.at(poll_s, sample)
    sim.run(arrivals)
    samples.append((costs.target_overhead_mean, costs.draft_overhead_mean))
    return sim, (statistics.fmean(t for t, _ in samples), statistics.fmean(d for _, d in samples))


def replay_run(setup: Setup, arrivals: list[Arrival], step_costs: dict[str, Any], poll_s: float) -> Simulation:
    """A run replayed on its own step costs. The typical round trips the router measured include
    what the simulation models itself (a call that waited behind the other lane's on the same worker
    measures that wait too), so the simulated ones are set, a few rounds, until the simulated
    router's typical excess equals the real router's, sampled alike: the same estimator on both
    sides. (The minimum the router decides on leaves out the scheduling delays of a loaded machine,
    which every call pays: matched on it, a replay on a loaded machine ran 30% fast.)"""
    measured = (step_costs["target_overhead_mean_s"], step_costs["draft_overhead_mean_s"])
    profile, tried = setup.profile, []  # (round trips set, estimates seen) per round
    for _ in range(MATCH_ROUNDS - 1):
        now = (profile.rpc_s, profile.round_trip("draft"))
        _, estimated = simulate(dataclasses.replace(setup, profile=profile), arrivals, poll_s, measured)
        tried.append((now, estimated))
        # secant steps: the estimate rises more slowly than the round trip set, as a shorter round trip
        # leaves a longer wait behind the other lane's call (most of all without drafts)
        slopes = [1.0, 1.0]
        if len(tried) > 1:
            before, seen_before = tried[-2]
            slopes = [min(max((e - b) / (n - p), 0.3), 1.0) if n != p else 1.0
                      for n, p, e, b in zip(now, before, estimated, seen_before)]
        target, draft = (max(n + (real - seen) / slope, 0.0)
                         for n, real, seen, slope in zip(now, measured, estimated, slopes))
        profile = dataclasses.replace(profile, rpc_s=target, draft_rpc_s=draft)
    return simulate(dataclasses.replace(setup, profile=profile), arrivals, poll_s, measured)[0]


def validate(profile_file: Path, serve_report_file: Path, costs: str = "run") -> dict[str, Any]:
    from specd.bench import serve as bench
    from specd.worker.tokenizer import Tokenizer

    raw = json.loads(profile_file.read_text())
    acceptance: dict[str, list[float]] = raw.get("acceptance") or {}
    if not all(acceptance.get(kind) for kind in ("code", "prose")):
        raise SpecdError(f"{profile_file}: no acceptance figures per kind (write it with `specd bench calibrate`)")
    profile = Profile.from_dict(raw)
    report = json.loads(serve_report_file.read_text())
    settings = bench.Settings.from_report(report["settings"])
    tokenizer = Tokenizer(Path(report["models"]["target"]))
    workloads = [bench.workload(settings, settings.seed + rep) for rep in range(settings.repeats)]
    prompt_tokens = {item.prompt: len(tokenizer.encode(item.prompt)) for items in workloads for item in items}
    if costs not in COSTS:
        raise SpecdError(f"costs {costs!r}: one of {', '.join(COSTS)}")
    rows = []
    for real in report["results"]:
        step_costs = real.get("step_costs_by_repeat")
        if costs == "run" and not (step_costs and all("target_overhead_mean_s" in c for c in step_costs)):
            raise SpecdError(f"{serve_report_file}: no step costs measured during the runs (a report of an older "
                             "`specd bench serve`): validate on the calibrated costs instead")
        config = RouterConfig(policy=real["policy"], max_batch_size=settings.max_batch_size)
        config = config.with_speculation(real["speculation"])
        usage = real.get("usage_by_repeat")
        latencies: list[float] = []
        for rep, items in enumerate(workloads):
            rng = random.Random(settings.seed + rep)
            t, arrivals = 0.0, []
            for i, item in enumerate(items):
                t += item.gap / real["rate"]
                # each request's own acceptance in this very run where it drafted; else its kind's
                measured = acceptance_from_usage(*usage[rep][i]) if usage else None
                alpha = measured if measured is not None else rng.choice(acceptance[item.kind])
                arrivals.append(Arrival(t, item.kind, prompt_tokens[item.prompt], item.max_new_tokens,
                                        item.max_new_tokens, alpha))
            setup = Setup(config, profile, settings.targets, settings.drafts, seed=settings.seed + rep)
            if costs == "run":
                setup = dataclasses.replace(setup, profile=in_run_profile(profile, step_costs[rep]))
                sim = replay_run(setup, arrivals, step_costs[rep], bench.COST_POLL_S)
            else:
                sim = Simulation(setup)
                sim.run(arrivals)
            latencies += [f.finished - f.arrival for f in sim.finished]
        simulated = statistics.fmean(latencies)
        rows.append({"policy": real["policy"], "speculation": real["speculation"], "rate": real["rate"],
                     "load": real.get("load"), "real_mean_latency_s": real["mean_latency_s"],
                     "simulated_mean_latency_s": round(simulated, 4),
                     "error": round(abs(simulated - real["mean_latency_s"]) / real["mean_latency_s"], 4),
                     "signed_error": round(simulated / real["mean_latency_s"] - 1, 4)})
    return {"costs": costs, "validation_max_error": max(row["error"] for row in rows),
            "validation_mean_error": round(statistics.fmean(row["error"] for row in rows), 4), "rows": rows}
