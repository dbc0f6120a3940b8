"""The experiments of `specd bench simulate`: each returns table rows and the figures the JSON
report names. Runs are deterministic per seed; independent runs go to a process pool."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from specd.proto.v1 import common_pb2
from specd.router.config import RouterConfig
from specd.router.decisions import Decisions
from specd.router.request import AcceptanceEstimate, Request
from specd.sim.engine import Setup, Simulation
from specd.sim.workloads import Workload

BASELINES = ("fcfs", "las", "sjf")


def simulate(setup: Setup, workload: Workload, rate: float) -> dict[str, Any]:
    """The figures of one run of `workload` at `rate` requests/s on `setup`, with the setup's own."""
    row = Simulation(setup).run(workload.arrivals(rate)).row()
    row.update(policy=setup.config.policy, speculation=setup.config.speculation_label, rate=round(rate, 4),
               targets=setup.targets, drafts=setup.drafts, routers=setup.routers, partition=setup.partition)
    return row


def _run(job: tuple[Setup, Workload, float]) -> dict[str, Any]:
    setup, workload, rate = job
    return simulate(setup, workload, rate)


def run_all(jobs: list[tuple[Setup, Workload, float]], workers: int | None = None) -> list[dict[str, Any]]:
    """Rows in the order of `jobs`, computed on `workers` processes (default: the CPUs)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) == 1:
        return [_run(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_run, jobs))


def capacity(setup: Setup, workload: Workload) -> float:
    """Requests/s the fleet sustains: tokens/s of a burst while every batch could be full, divided
    by the workload's mean output length."""
    burst = Workload(workload.mix, max(workload.requests // 2, 4 * setup.config.max_batch_size
                                       * setup.config.pipeline_depth * setup.targets), workload.seed + 1)
    row = simulate(setup, burst, rate=1e9)
    tokens_per_s = row["full_batch_tokens_per_s"] or row["tokens_per_s"]
    return tokens_per_s / statistics.fmean(a.output_tokens for a in burst.arrivals(1.0))


def sweep(reference: Setup, variants: list[Setup], workload: Workload, loads: Iterable[float],
          workers: int | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Every variant at each load, a fraction of the reference's capacity (requests/s); rows carry
    their load."""
    cap = capacity(reference, workload)
    jobs = [(variant, workload, load * cap) for load in loads for variant in variants]
    rows = run_all(jobs, workers)
    for row, (_, _, rate) in zip(rows, jobs):
        row["load"] = round(rate / cap, 3)
    return cap, rows


def policies_vs_load(setup: Setup, workload: Workload, loads: Iterable[float], policies: Iterable[str],
                     workers: int | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Mean latency per policy at each load (a fraction of capacity, measured with fcfs)."""
    def with_policy(name: str) -> Setup:
        return replace(setup, config=replace(setup.config, policy=name))

    return sweep(with_policy("fcfs"), [with_policy(p) for p in policies], workload, loads, workers)


def speculation_vs_rate(setup: Setup, workload: Workload, loads: Iterable[float], modes: Iterable[str],
                        workers: int | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Mean latency per speculation mode at each rate (fractions of the capacity without speculation)."""
    def with_mode(mode: str) -> Setup:
        return replace(setup, config=setup.config.with_speculation(mode))

    return sweep(with_mode("none"), [with_mode(m) for m in modes], workload, loads, workers)


def by_rate(rows: list[dict[str, Any]], key: str) -> dict[float, dict[str, dict[str, Any]]]:
    table: dict[float, dict[str, dict[str, Any]]] = {}
    for row in rows:
        table.setdefault(row["load"], {})[row[key]] = row
    return table


def decision_time(config: RouterConfig, queued: int, repeats: int = 200, seed: int = 0) -> dict[str, float]:
    """CPU microseconds (thread time: other processes on the machine do not count) of one lane
    decision (pick the batch, choose its k, requeue it) with `queued` requests
    waiting on one target replica, in mixed states (attained service, acceptance, lengths)."""
    import random

    rng = random.Random(seed)
    d = Decisions(config)
    for i in range(queued):
        r = Request(id=str(i), prompt=[1] * 8, max_new_tokens=rng.choice((256, 1024, 2048)),
                    sampling=common_pb2.SamplingParams(), max_k=config.max_k, stop_token=None,
                    predicted_length=rng.uniform(50, 1000), arrival=float(i))
        d.admit(r, "target-0")
        r.iterations = rng.randrange(0, 100)
        r.last_k = rng.randrange(0, config.max_k + 1)
        r.acceptance = AcceptanceEstimate.seeded(rng.random())
        for _ in range(rng.randrange(0, 12)):
            r.acceptance.observe(rng.randrange(0, 5), 4)
            r.acceptance_history.append(r.acceptance.value)
        d.move(r, None)  # queued again in this state (admitted, it was queued as new: level 0, no acceptance)
        d.move(r, "target-0")
    waiting: set[str] = set()
    pick_s = choose_s = end_s = 0.0
    for _ in range(repeats):
        started = time.thread_time()
        batch = d.pick("target-0", waiting)
        picked = time.thread_time()
        d.choose(batch, [True] * len(batch), overlapped=True)
        chosen = time.thread_time()
        d.end(batch)  # back in the queue (a commit would change their keys; the cost is the same)
        pick_s += picked - started
        choose_s += chosen - picked
        end_s += time.thread_time() - chosen
    us = 1e6 / repeats
    return {"queued": queued, "batch": len(batch), "pick_us": round(us * pick_s, 1),
            "choose_us": round(us * choose_s, 1), "requeue_us": round(us * end_s, 1),
            "decision_us": round(us * (pick_s + choose_s + end_s), 1)}
