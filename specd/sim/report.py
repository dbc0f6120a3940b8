"""`specd bench simulate`: the reproductions as one report (JSON keys named by issue 12)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

from specd.router.config import RouterConfig
from specd.sim import experiments
from specd.sim.engine import Setup
from specd.sim.experiments import by_rate
from specd.sim.profiles import load_profile
from specd.sim.workloads import MIXES, Workload

FIXED_KS = range(1, 9)


@dataclass(frozen=True)
class Settings:
    profile: str = "h100-70b-tp8"
    workload: str = "paper"
    requests: int = 1000
    max_batch_size: int = 8
    targets: int = 1
    drafts: int = 1
    loads: list[float] = field(default_factory=lambda: [0.7, 0.9, 0.95])  # of fcfs capacity
    policies: list[str] = field(default_factory=lambda: ["fcfs", "las", "sjf", "laps-sd"])
    # speculation sweep: rates as fractions of the capacity without speculation
    speculation_loads: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.8, 0.95])
    speculations: list[str] = field(default_factory=lambda: ["none", *(f"fixed:{k}" for k in FIXED_KS), "goodput"])
    decision_queued: list[int] = field(default_factory=lambda: [1000, 10000])
    routers: list[int] = field(default_factory=list)  # router scale-out: router counts over `router_targets`
    router_targets: int = 8
    scale_targets: int = 0  # scale run: target replicas (0: skipped)
    scale_rate: float = 10_000.0
    scale_seconds: float = 5.0
    seed: int = 0
    seeds: int = 3  # workloads (seed, seed + 1, ...) the policy comparison runs on
    jobs: int | None = None


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b else float("nan")


def run(settings: Settings, progress=print) -> dict[str, Any]:
    started = time.time()
    profile = load_profile(settings.profile)
    workload = Workload(MIXES[settings.workload], settings.requests, settings.seed)
    config = RouterConfig(policy="fcfs", speculation="goodput", max_batch_size=settings.max_batch_size,
                          max_queued_requests=10**6)
    setup = Setup(config, profile, settings.targets, settings.drafts, seed=settings.seed)
    report: dict[str, Any] = {"profile": profile.name, "profile_source": profile.source, "workload": settings.workload,
                              "requests": settings.requests, "max_batch_size": settings.max_batch_size,
                              "targets": settings.targets, "drafts": settings.drafts}

    progress("policies across loads ...")
    # heavy tails make one workload's figures swing: each seed is a new workload, the ratio is their median
    ratios, versus_best, policy_rows, estimates, true_length_estimates = [], [], [], [], []
    for seed in range(settings.seed, settings.seed + settings.seeds):
        drawn = Workload(workload.mix, workload.requests, seed)
        capacity, rows = experiments.policies_vs_load(setup, drawn, settings.loads, settings.policies, settings.jobs)
        for row in rows:
            row["seed"], row["capacity_rps"] = seed, round(capacity, 4)
        policy_rows += rows
        table = by_rate(rows, "policy")
        stable = [load for load, row in table.items() if "fcfs" in row and row["fcfs"]["unfinished"] == 0 and load < 1]
        if stable and "laps-sd" in table[max(stable)]:
            top = table[max(stable)]
            ratios.append(_ratio(top["laps-sd"]["mean_latency_s"], top["fcfs"]["mean_latency_s"]))
            baselines = [top[p]["mean_latency_s"] for p in experiments.BASELINES if p in top]
            versus_best.append(_ratio(top["laps-sd"]["mean_latency_s"], min(baselines)))
            report["highest_stable_load"] = max(stable)
        for row in rows:
            if row["policy"] == "laps-sd" and row["estimate_error"] is not None:
                estimates.append(row["estimate_error"])
                true_length_estimates.append(row["estimate_error_true_length"])
    report["capacity_rps"] = policy_rows[0]["capacity_rps"] if policy_rows else None
    if ratios:
        report["laps_sd_vs_fcfs"] = round(statistics.median(ratios), 4)
        report["laps_sd_vs_fcfs_by_seed"] = ratios
        report["laps_sd_vs_best_baseline"] = round(statistics.median(versus_best), 4)
        report["laps_sd_vs_best_baseline_by_seed"] = versus_best
    report["estimate_error"] = round(statistics.fmean(estimates), 4) if estimates else None
    report["estimate_error_true_length"] = (round(statistics.fmean(true_length_estimates), 4)
                                            if true_length_estimates else None)

    progress("speculation modes across rates ...")
    off_capacity, speculation_rows = experiments.speculation_vs_rate(
        setup, workload, settings.speculation_loads, settings.speculations, settings.jobs)
    report["capacity_without_speculation_rps"] = round(off_capacity, 4)
    goodput_vs_fixed, goodput_vs_off = [], []
    for load, row in by_rate(speculation_rows, "speculation").items():
        fixed = [r["mean_latency_s"] for name, r in row.items() if name.startswith("fixed")]
        if "goodput" in row and fixed:
            goodput_vs_fixed.append(_ratio(row["goodput"]["mean_latency_s"], min(fixed)))
        if "goodput" in row and "none" in row:
            goodput_vs_off.append(_ratio(row["goodput"]["mean_latency_s"], row["none"]["mean_latency_s"]))
    report["goodput_vs_best_fixed_max"] = max(goodput_vs_fixed, default=None)
    report["goodput_vs_off_max"] = max(goodput_vs_off, default=None)
    report["goodput_vs_off_min"] = min(goodput_vs_off, default=None)
    report["validation_max_error"] = None  # `--validate` measures it, on a calibrated profile, in a run of its own

    progress("decision time ...")
    decision_config = replace(config, policy="laps-sd")
    decisions = [experiments.decision_time(decision_config, n) for n in settings.decision_queued]
    decisions += [experiments.decision_time(replace(decision_config, max_batch_size=32), n)
                  for n in settings.decision_queued]
    for decision in decisions:
        if decision["batch"] == settings.max_batch_size:
            queued = int(decision["queued"])
            key = f"decision_us_{queued // 1000}k" if queued % 1000 == 0 else f"decision_us_{queued}"
            report[key] = decision["decision_us"]
    report["rows"] = {"policies": policy_rows, "speculation": speculation_rows, "decisions": decisions}

    if settings.routers:
        progress("router scale-out ...")
        report["rows"]["routers"] = router_scale_out(setup, workload, settings)
    if settings.scale_targets:
        progress("scale ...")
        report["scale"] = scale_run(setup, settings)
    report["seconds"] = round(time.time() - started, 1)
    return report


def router_scale_out(setup: Setup, workload: Workload, settings: Settings) -> list[dict[str, Any]]:
    """Independent routers over shared workers, against one router and against a partition of the
    workers per router, at the top load: mean latency of each, laps-sd with goodput speculation."""
    fleet = replace(setup, config=replace(setup.config, policy="laps-sd"), targets=settings.router_targets,
                    drafts=settings.router_targets)
    many = Workload(workload.mix, workload.requests * settings.router_targets, workload.seed)
    rate = max(settings.loads) * experiments.capacity(fleet, many)
    jobs = [(replace(fleet, routers=1), many, rate)]
    for n in settings.routers:
        if n > 1:
            jobs += [(replace(fleet, routers=n), many, rate), (replace(fleet, routers=n, partition=True), many, rate)]
    rows = experiments.run_all(jobs, settings.jobs)
    single = rows[0]["mean_latency_s"]
    for row in rows:
        row["latency_vs_one_router"] = _ratio(row["mean_latency_s"], single)
    return rows


def scale_run(setup: Setup, settings: Settings) -> dict[str, Any]:
    """A large fleet: `scale_targets` target and draft replicas, `scale_rate` requests/s of chat for
    `scale_seconds`; reports the wall time the simulation took."""
    chat = Workload(MIXES["chat"], int(settings.scale_rate * settings.scale_seconds), settings.seed)
    fleet = replace(setup, config=replace(setup.config, policy="laps-sd", max_batch_size=32),
                    targets=settings.scale_targets, drafts=settings.scale_targets)
    row = experiments.simulate(fleet, chat, settings.scale_rate)
    row["simulated_seconds_per_wall_second"] = round(settings.scale_seconds / row["wall_s"], 4)
    return row


def format_report(report: dict[str, Any]) -> str:
    lines = [f"profile {report['profile']}, workload {report['workload']}, {report['requests']} requests per run, "
             f"batch {report['max_batch_size']}, {report['targets']} target(s); fcfs capacity "
             f"{report['capacity_rps']} requests/s", "",
             "| seed | load | policy | mean latency s | p99 s | mean TTFT s | mean k |",
             "|---|---|---|---|---|---|---|"]
    for row in report["rows"]["policies"]:
        lines.append(f"| {row['seed']} | {row['load']} | {row['policy']} | {row['mean_latency_s']:.3f} | "
                     f"{row['p99_latency_s']:.3f} | "
                     f"{row['mean_ttft_s']:.3f} | {row['mean_k']:.2f} |")
    lines += ["", "| load (of no-speculation capacity) | speculation | mean latency s | mean k | accepted / drafted |",
              "|---|---|---|---|---|"]
    for row in report["rows"]["speculation"]:
        lines.append(f"| {row['load']} | {row['speculation']} | {row['mean_latency_s']:.3f} | {row['mean_k']:.2f} | "
                     f"{row['accepted_per_drafted']:.3f} |")
    lines += ["", "| queued | batch | pick us | choose us | requeue us | decision us |", "|---|---|---|---|---|---|"]
    for row in report["rows"]["decisions"]:
        lines.append(f"| {row['queued']} | {row['batch']} | {row['pick_us']} | {row['choose_us']} | "
                     f"{row['requeue_us']} | {row['decision_us']} |")
    if "routers" in report["rows"]:
        lines += ["", "| routers | partition | mean latency s | vs one router |", "|---|---|---|---|"]
        for row in report["rows"]["routers"]:
            lines.append(f"| {row['routers']} | {row['partition']} | {row['mean_latency_s']:.3f} | "
                         f"{row['latency_vs_one_router']} |")
    keys = ["laps_sd_vs_fcfs", "laps_sd_vs_fcfs_by_seed", "laps_sd_vs_best_baseline",
            "laps_sd_vs_best_baseline_by_seed", "highest_stable_load", "goodput_vs_best_fixed_max",
            "goodput_vs_off_max", "estimate_error", "estimate_error_true_length", "decision_us_1k", "decision_us_10k"]
    lines += [""] + [f"{key}: {report.get(key)}" for key in keys]
    if report.get("scale"):
        s = report["scale"]
        lines.append(f"scale: {s['targets']} targets, {s['requests']} requests in {s['wall_s']:.0f} s of wall time")
    return "\n".join(lines)


def format_validation(checked: dict[str, Any]) -> str:
    lines = ["| policy | speculation | rate | real mean latency s | simulated s | error |", "|---|---|---|---|---|---|"]
    for row in checked["rows"]:
        lines.append(f"| {row['policy']} | {row['speculation']} | {row['rate']} | {row['real_mean_latency_s']} | "
                     f"{row['simulated_mean_latency_s']} | {row['error']:.1%} |")
    lines.append(f"validation_max_error: {checked['validation_max_error']}, mean {checked['validation_mean_error']}")
    return "\n".join(lines)
