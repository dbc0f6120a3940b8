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


def in_run_profile(calibrated: Profile, step_costs: dict[str, Any]) -> Profile:
    """`calibrated` with the passes and round trips a configuration's router measured during its runs."""
    return dataclasses.replace(
        calibrated, name="in-run", target=PassCost(**step_costs["target"]), draft=PassCost(**step_costs["draft"]),
        rpc_s=step_costs["target_overhead_s"], draft_rpc_s=step_costs["draft_overhead_s"],
        source=f"the router's cost model sampled {step_costs['samples']} times during the run; "
               f"prefill from {calibrated.source}")


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
        if costs == "run" and not real.get("step_costs"):
            raise SpecdError(f"{serve_report_file}: no step costs measured during the runs (a report of an older "
                             "`specd bench serve`): validate on the calibrated costs instead")
        replayed = in_run_profile(profile, real["step_costs"]) if costs == "run" else profile
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
            sim = Simulation(Setup(config, replayed, settings.targets, settings.drafts, seed=settings.seed + rep))
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
