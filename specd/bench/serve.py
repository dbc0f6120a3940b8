"""`specd bench serve`: the serving benchmark on a local stack (see docs/serving.md).

Workers start once, and one router per (policy, speculation) pair, all over the same workers
(an idle router costs nothing). Rates are set against measured capacity: a burst of the whole
workload through fcfs measures the tokens per second a speculation mode streams while every
batch is full (until only as many requests remain as batches have room for), and each load in
`loads` becomes the arrival rate offering that fraction of it (or `rates` gives absolute rates).
The burst is repeated after the sweep and the
lower figure is the capacity against which stability is judged: a run is stable when it offers
fewer tokens per second than that. Every run replays the same workload: the same prompts,
output lengths and Poisson arrival pattern (scaled by the rate), so runs differ only in what is
being compared. Each rate is measured `repeats` times, the configurations taking turns in a
rotating order, so that a burst of load from elsewhere on a shared machine does not land on one
configuration only; a configuration's figures pool the requests of all its repeats, and the
goals' ratios are medians over the repeats with their spread (min, max). Outputs
ignore the end-of-text token so that every run generates exactly the same number of tokens.
During each run the router's cost model (its fits of the workers' step costs and the round trips)
is sampled: the costs under that run's load, which `specd bench simulate --validate` replays.
"""

from __future__ import annotations

import ast
import asyncio
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from specd.demo import corpus
from specd.router.config import RouterConfig
from specd.router.local import LocalStack, RouterSettings
from specd.sim.workloads import LogNormal

# the speculation mode whose capacity sets the rates at which the speculation modes are compared
REFERENCE_SPECULATION = "goodput"
BURST_RATE = 1e6  # requests/s: the whole workload at once
PIPELINE_DEPTH = RouterConfig().pipeline_depth  # the routers run with the default: batches in flight per target


# Output lengths: the heavy-tailed log-normal shape of public chat traces (specd/sim/workloads.py:
# sigma 1.0, as ShareGPT's), scaled to what this machine's demo models generate in a benchmark of a
# few minutes: median 24 tokens, mean 40, one request in seven beyond 3x the median.
OUTPUT_TOKENS = LogNormal(median=24, sigma=1.0, low=4, high=256)
LONG_FACTOR = 3  # a request is "long" (the tail, for the short/long latency split) beyond 3x the median


@dataclass(frozen=True)
class Settings:
    loads: list[float] = field(default_factory=lambda: [0.7, 0.95])  # fractions of capacity
    rates: list[float] | None = None  # absolute arrival rates (requests/s) instead of loads
    requests: int = 32
    repeats: int = 3
    policies: list[str] = field(default_factory=lambda: ["fcfs", "laps-sd"])
    speculations: list[str] = field(default_factory=lambda: ["none", "fixed:2", "fixed:4", "goodput"])
    compare_speculations: list[str] = field(default_factory=lambda: ["goodput"])
    max_batch_size: int = 2
    output_tokens: LogNormal = OUTPUT_TOKENS
    targets: int = 1
    drafts: int = 1
    seed: int = 0
    log_dir: Path | None = None
    # service-level objectives of `request_goodput` (None: that bound does not apply)
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None

    @classmethod
    def long_run(cls) -> Settings:
        """`--long`: four loads, twice the requests, five repeats (about an hour on a 2-core machine)."""
        return cls(loads=[0.5, 0.7, 0.9, 0.95], requests=64, repeats=5)

    @classmethod
    def from_report(cls, settings: dict) -> Settings:
        """The settings a `specd bench serve --json` report was made with (its `settings`)."""
        known = {f.name for f in fields(cls)} - {"log_dir"}
        given = {k: v for k, v in settings.items() if k in known}
        if isinstance(given.get("output_tokens"), dict):
            given["output_tokens"] = LogNormal(**given["output_tokens"])
        return cls(**given)


@dataclass(frozen=True)
class Item:
    kind: str  # "code" | "prose"
    prompt: str
    max_new_tokens: int
    gap: float  # unit-rate exponential inter-arrival gap (divided by the rate)
    long: bool = False  # in the tail of the output lengths (LONG_FACTOR)


@dataclass
class Outcome:
    sent: float
    end: float
    ttft: float
    tokens: int
    proposed: int
    accepted: int
    iterations: int
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (arrival time, tokens) of each streamed chunk
    long: bool = False


# -- workload ------------------------------------------------------------------------------------

def prose_prompts(count: int, chars: int = 160) -> list[str]:
    """English docstrings of held-out standard-library modules and functions."""
    out = []
    for path in corpus.source_files(held_out=True):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= chars and doc[0].isalpha():
                    out.append(doc[:chars])
                    if len(out) == count:
                        return out
    return out


def workload(s: Settings, seed: int) -> list[Item]:
    """Exactly half code and half prose prompts, shuffled; output lengths drawn from s.output_tokens."""
    rng = random.Random(seed)
    prompts = {"code": corpus.held_out_prompts(s.requests), "prose": prose_prompts(s.requests)}
    kinds = ["code", "prose"] * (s.requests // 2) + ["code"] * (s.requests % 2)
    rng.shuffle(kinds)
    items = []
    for i, kind in enumerate(kinds):
        pool = prompts[kind]
        tokens = s.output_tokens.draw(rng)
        items.append(Item(kind, pool[i % len(pool)], tokens, rng.expovariate(1.0),
                          tokens > LONG_FACTOR * s.output_tokens.median))
    return items


# -- one run -------------------------------------------------------------------------------------

async def drive(address: str, items: list[Item], rate: float) -> list[Outcome]:
    from specd.client import AsyncClient

    loop = asyncio.get_running_loop()
    async with AsyncClient(address) as client:
        start = loop.time()
        arrivals, t = [], 0.0
        for item in items:
            t += item.gap / rate
            arrivals.append(t)

        async def one(item: Item, arrival: float) -> Outcome:
            await asyncio.sleep(max(0.0, start + arrival - loop.time()))
            sent = loop.time()
            first, chunks, final = None, [], None
            async for chunk in client.stream(item.prompt, item.max_new_tokens, ignore_eos=True):
                if chunk.tokens:
                    first = first or loop.time()
                    chunks.append((loop.time() - start, len(chunk.tokens)))
                final = chunk
            if final is None or final.usage is None:
                raise RuntimeError("the router's stream ended without its usage")
            u = final.usage
            return Outcome(sent - start, loop.time() - start, (first or loop.time()) - sent,
                           sum(n for _, n in chunks), u.draft_tokens_proposed, u.draft_tokens_accepted,
                           u.iterations, chunks, item.long)

        return await asyncio.gather(*(one(item, a) for item, a in zip(items, arrivals)))


# the router's cost model forgets with a window of about 50 calls (speculation.LinearFit's decay), about
# half a second at these loads: sampled this often, each sample reflects the calls since the last one
COST_POLL_S = 0.5


async def poll_costs(address: str, until: asyncio.Event) -> list:
    """The router's cost model (RouterStats.costs) every COST_POLL_S while it has requests, until `until`."""
    import grpc

    from specd.proto.v1 import serving_pb2, serving_pb2_grpc

    samples = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = serving_pb2_grpc.SpecdStub(channel)
        while not until.is_set():
            try:
                await asyncio.wait_for(until.wait(), COST_POLL_S)
            except asyncio.TimeoutError:
                pass
            stats = await stub.Stats(serving_pb2.RouterStatsRequest())
            if stats.queued_requests + stats.running_requests or until.is_set():
                samples.append(stats.costs)
    return samples


async def measured(address: str, items: list[Item], rate: float) -> tuple[list[Outcome], list]:
    """`drive`, and the router's cost model sampled meanwhile: the step costs under this very run's load."""
    done = asyncio.Event()
    poller = asyncio.ensure_future(poll_costs(address, done))
    try:
        outcomes = await drive(address, items, rate)
    finally:
        done.set()
    return outcomes, await poller


def mean_costs(samples: list) -> dict | None:
    """The mean of sampled cost models (a mean of linear models: its prediction anywhere is the mean of
    theirs), as a profile's fields: target, draft (PassCost's), and the round trips beyond compute."""
    if not samples:
        return None

    def mean(get) -> float:
        return round(statistics.fmean(get(c) for c in samples), 7)

    def fit(role: str) -> dict:
        return {name: mean(lambda c: getattr(getattr(c, role), name)) for name in ("base", "per_token", "per_context")}

    return {"target": fit("target"), "draft": fit("draft"), "target_overhead_s": mean(lambda c: c.target_overhead_s),
            "draft_overhead_s": mean(lambda c: c.draft_overhead_s),
            "target_overhead_mean_s": mean(lambda c: c.target_overhead_mean_s),
            "draft_overhead_mean_s": mean(lambda c: c.draft_overhead_mean_s), "samples": len(samples)}


def busy_seconds(outcomes: list[Outcome]) -> float:
    """Length of the union of the requests' [sent, end] intervals: time with work in the system."""
    total, cover_end = 0.0, float("-inf")
    for o in sorted(outcomes, key=lambda o: o.sent):
        if o.end > cover_end:
            total += o.end - max(o.sent, cover_end)
            cover_end = o.end
    return total


def serving_metrics(runs: list[list[Outcome]], makespan: float, slo_ttft_ms: float | None = None,
                    slo_tpot_ms: float | None = None) -> dict:
    """The metric names of common serving benchmarks, in milliseconds: TTFT, TPOT = (e2e - TTFT) /
    (output tokens - 1), ITL (the gaps between streamed chunks: with speculation one chunk may
    carry several tokens), end-to-end latency; request and output throughput over the runs'
    summed makespan; request_goodput: requests per second that met every SLO given."""
    outcomes = [o for run in runs for o in run]
    ttft = [1e3 * o.ttft for o in outcomes]
    e2el = [1e3 * (o.end - o.sent) for o in outcomes]
    tpot = [1e3 * (o.end - o.sent - o.ttft) / (o.tokens - 1) for o in outcomes if o.tokens > 1]
    itl = [1e3 * (b[0] - a[0]) for o in outcomes for a, b in zip(o.chunks, o.chunks[1:])]
    figures = {}
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        ordered = sorted(values)
        figures[f"mean_{name}_ms"] = round(statistics.fmean(ordered), 3) if ordered else None
        figures[f"median_{name}_ms"] = round(_quantile(ordered, 0.5), 3) if ordered else None
        figures[f"p99_{name}_ms"] = round(_quantile(ordered, 0.99), 3) if ordered else None

    def meets_slo(o: Outcome) -> bool:
        per_token = 1e3 * (o.end - o.sent - o.ttft) / (o.tokens - 1) if o.tokens > 1 else 0.0
        return ((slo_ttft_ms is None or 1e3 * o.ttft <= slo_ttft_ms)
                and (slo_tpot_ms is None or per_token <= slo_tpot_ms))
    figures["request_throughput"] = round(len(outcomes) / makespan, 4)
    figures["output_throughput"] = round(sum(o.tokens for o in outcomes) / makespan, 3)
    figures["request_goodput"] = round(sum(map(meets_slo, outcomes)) / makespan, 4)
    return figures


def summarize(policy: str, speculation: str, rate: float, runs: list[list[Outcome]],
              slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> dict:
    """Figures of one configuration over its runs: latencies pooled, rates over the summed times."""
    outcomes = [o for run in runs for o in run]
    latencies = sorted(o.end - o.sent for o in outcomes)
    tokens = sum(o.tokens for o in outcomes)
    makespan = sum(max(o.end for o in run) - min(o.sent for o in run) for run in runs)
    busy = sum(busy_seconds(run) for run in runs)
    iterations = sum(o.iterations for o in outcomes)
    proposed = sum(o.proposed for o in outcomes)
    return {
        "policy": policy, "speculation": speculation, "rate": rate,
        "mean_latency_s": round(statistics.fmean(latencies), 4),
        # one figure per repeat (each repeat replays its own workload): the goals' medians and spreads
        "mean_latency_s_by_repeat": [round(statistics.fmean(o.end - o.sent for o in run), 4) for run in runs],
        # per request of each repeat, in workload order: what the simulator's validation replays
        "usage_by_repeat": [[[o.accepted, o.proposed, o.iterations] for o in run] for run in runs],
        "p50_latency_s": round(_quantile(latencies, 0.50), 4),
        "p99_latency_s": round(_quantile(latencies, 0.99), 4),
        "mean_ttft_s": round(statistics.fmean(o.ttft for o in outcomes), 4),
        # how the policy treats each kind of request (LAS-style policies trade long for short)
        "short_mean_latency_s": _mean_latency([o for o in outcomes if not o.long]),
        "long_mean_latency_s": _mean_latency([o for o in outcomes if o.long]),
        "tokens_per_s": round(tokens / makespan, 2),
        "goodput_tokens_per_s": round(tokens / busy, 2),
        "mean_k": round(proposed / iterations, 3) if iterations else 0.0,
        # accepted / drafted tokens (not α, which counts only verified drafts: docs/metrics.md)
        "accepted_fraction_of_proposed": round(sum(o.accepted for o in outcomes) / proposed, 3) if proposed else 0.0,
        "tokens_per_iteration": round(tokens / iterations, 3) if iterations else 0.0,
        "requests": len(outcomes),
        "generated_tokens": tokens,
        "offered_tokens_per_s": round(rate * tokens / len(outcomes), 2),
        **serving_metrics(runs, makespan, slo_ttft_ms, slo_tpot_ms),
    }


def _mean_latency(outcomes: list[Outcome]) -> float | None:
    return round(statistics.fmean(o.end - o.sent for o in outcomes), 4) if outcomes else None


def _quantile(sorted_values: list[float], q: float) -> float:
    index = q * (len(sorted_values) - 1)
    low = int(index)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (index - low)


# -- gRPC overhead -------------------------------------------------------------------------------

def grpc_overhead(target_address: str, prompt_tokens: list[int], calls: int = 30) -> dict:
    """Round trip of a one-request Verify (k = 0) against the target's own compute time for it."""
    import grpc

    from specd.proto.v1 import worker_pb2, worker_pb2_grpc

    rid = "bench-overhead"
    with grpc.insecure_channel(target_address) as channel:
        stub = worker_pb2_grpc.TargetWorkerStub(channel)
        committed = list(prompt_tokens)
        stub.Prefill(worker_pb2.PrefillRequest(items=[worker_pb2.CommittedDelta(request_id=rid, tokens=committed)]))
        trips, computes = [], []
        for _ in range(calls):
            delta = worker_pb2.CommittedDelta(request_id=rid, start=0, tokens=committed)
            started = time.perf_counter()
            reply = stub.Verify(worker_pb2.VerifyRequest(items=[worker_pb2.VerifyItem(delta=delta)]))
            trips.append(time.perf_counter() - started)
            computes.append(reply.cost.compute_seconds)  # each call re-does the same one-token step
        stub.Release(worker_pb2.ReleaseRequest(request_ids=[rid]))
    trip, compute = statistics.median(trips), statistics.median(computes)
    return {"target_step_s": round(compute, 5), "round_trip_s": round(trip, 5),
            "overhead_per_call_s": round(trip - compute, 5),
            "overhead_per_iteration_s": round(2 * (trip - compute), 5),  # propose + verify
            "overhead_vs_target_step": round(2 * (trip - compute) / compute, 3)}


# -- the whole benchmark -------------------------------------------------------------------------

Config = tuple[str, str]  # (policy, speculation)


def plan(s: Settings, capacity: dict[str, float], mean_tokens: float) -> dict[float, list[Config]]:
    """rate -> the configurations run at it. Policies are compared at loads of their own
    speculation mode's capacity; speculation modes (under laps-sd) at loads of the reference's."""
    def rates_for(spec: str) -> list[float]:
        if s.rates:
            return list(s.rates)
        return [round(load * capacity[spec] / mean_tokens, 3) for load in s.loads]

    runs: dict[float, list[Config]] = {}
    for spec in s.compare_speculations:
        for rate in rates_for(spec):
            runs.setdefault(rate, []).extend((policy, spec) for policy in s.policies)
    for rate in rates_for(REFERENCE_SPECULATION):
        runs.setdefault(rate, []).extend(("laps-sd", spec) for spec in s.speculations)
    return {rate: list(dict.fromkeys(configs)) for rate, configs in sorted(runs.items())}


def capacity_specs(s: Settings) -> list[str]:
    """Speculation modes whose capacity is measured (fcfs under each)."""
    return list(dict.fromkeys([*s.compare_speculations, REFERENCE_SPECULATION]))


def router_configs(s: Settings) -> list[Config]:
    """Every configuration the benchmark runs (the capacity bursts go through fcfs)."""
    configs = [("fcfs", spec) for spec in capacity_specs(s)]
    configs += [(policy, spec) for spec in s.compare_speculations for policy in s.policies]
    configs += [("laps-sd", spec) for spec in s.speculations]
    return list(dict.fromkeys(configs))


def is_stable(r: dict, capacity: dict[str, float]) -> bool:
    """The queue keeps up: tokens arrive (rate x tokens per request) more slowly than the
    speculation mode can generate them with full batches."""
    return r["offered_tokens_per_s"] < capacity[r["speculation"]]


def per_repeat(a: dict, b: dict) -> tuple[float, list[float]]:
    """Median and [min, max] of a's mean latency / b's over the repeats (repeat i of both replays the
    same workload, the configurations taking turns): the figure a noisy machine cannot decide alone."""
    ratios = [x / y for x, y in zip(a.get("mean_latency_s_by_repeat") or [a["mean_latency_s"]],
                                    b.get("mean_latency_s_by_repeat") or [b["mean_latency_s"]])]
    return round(statistics.median(ratios), 3), [round(min(ratios), 3), round(max(ratios), 3)]


def goals(results: list[dict], capacity: dict[str, float], s: Settings) -> dict:
    def find(policy: str, spec: str, rate: float) -> dict | None:
        return next((r for r in results if (r["policy"], r["speculation"], r["rate"]) == (policy, spec, rate)), None)

    out: dict = {"laps_sd_vs_fcfs": []}
    for spec in s.compare_speculations:
        found = [(f, find("laps-sd", spec, f["rate"])) for f in results
                 if (f["policy"], f["speculation"]) == ("fcfs", spec)]
        pairs = sorted(((f, laps) for f, laps in found if laps is not None), key=lambda pair: pair[0]["rate"])
        if not pairs:
            continue
        stable = [(f, laps) for f, laps in pairs if is_stable(f, capacity)]
        fcfs, laps = (stable or pairs[:1])[-1]
        ratio = laps["mean_latency_s"] / fcfs["mean_latency_s"]
        median, spread = per_repeat(laps, fcfs)
        out["laps_sd_vs_fcfs"].append({
            "speculation": spec, "rate": fcfs["rate"], "load": fcfs["load"],
            "fcfs_stable_rates": [f["rate"] for f, _ in stable],
            "ratio": round(ratio, 3), "median_ratio": median, "spread": spread, "goal": 0.75,
            "met": bool(stable) and median <= 0.75,
            "ratios_by_load": {str(f["load"]): round(laps["mean_latency_s"] / f["mean_latency_s"], 3)
                               for f, laps in pairs}})
    per_rate = []
    for rate in sorted({r["rate"] for r in results}):
        good = find("laps-sd", "goodput", rate)
        fixed = [r for r in results if r["policy"] == "laps-sd" and r["speculation"].startswith("fixed:")
                 and r["rate"] == rate]
        plain = find("laps-sd", "none", rate)  # no speculation
        if not good or not (fixed or plain):
            continue
        row = {"rate": rate, "goodput_latency_s": good["mean_latency_s"]}
        if fixed:
            best = min(fixed, key=lambda r: r["mean_latency_s"])
            median, spread = per_repeat(good, best)
            row.update(best_fixed=best["speculation"],
                       vs_best_fixed=round(good["mean_latency_s"] / best["mean_latency_s"], 3),
                       vs_best_fixed_median=median, vs_best_fixed_spread=spread, met_vs_fixed=median <= 1.05)
        if plain:
            median, spread = per_repeat(good, plain)
            row.update(vs_none=round(good["mean_latency_s"] / plain["mean_latency_s"], 3), vs_none_median=median,
                       vs_none_spread=spread, met_vs_none=median <= 1.0)
        per_rate.append(row)
    out["goodput_speculation"] = per_rate
    return out


def saturated_throughput(outcomes: list[Outcome], slots: int) -> float:
    """Tokens per second streamed while at least `slots` requests were unfinished (every batch full),
    i.e. up to the moment the last `slots` requests were all that remained."""
    ends = sorted(o.end for o in outcomes)
    until = ends[max(len(ends) - slots, 0)]
    since = min(o.sent for o in outcomes)
    return sum(n for o in outcomes for t, n in o.chunks if t <= until) / (until - since)


def burst_capacity(address: str, items: list[Item], slots: int) -> float:
    """A speculation mode's capacity: the whole workload queued at once."""
    return saturated_throughput(asyncio.run(drive(address, items, BURST_RATE)), slots)


def sweep(schedule: dict[float, list[Config]], workloads: list[list[Item]], addresses: dict[Config, str],
          slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> list[dict]:
    """Every (rate, configuration) of the schedule over every workload; a result per pair."""
    results = []
    for rate, configs in schedule.items():
        runs: dict[Config, list[list[Outcome]]] = {config: [] for config in configs}
        costs: dict[Config, list[dict | None]] = {config: [] for config in configs}
        for rep, items in enumerate(workloads):
            shift = rep % len(configs)
            for config in configs[shift:] + configs[:shift]:
                outcomes, samples = asyncio.run(measured(addresses[config], items, rate))
                runs[config].append(outcomes)
                costs[config].append(mean_costs(samples))
        for config in configs:
            r = summarize(*config, rate, runs[config], slo_ttft_ms, slo_tpot_ms)
            # the step costs each run met (a shared machine's load moves between runs): what
            # `specd bench simulate --validate` replays each run on
            r["step_costs_by_repeat"] = costs[config]
            results.append(r)
            _progress(f"rate {rate:g}/s {r['policy']:8s} {r['speculation']:9s} mean {r['mean_latency_s']:.3f}s "
                      f"(short {r['short_mean_latency_s']}s, long {r['long_mean_latency_s']}s) "
                      f"p99 {r['p99_latency_s']:.3f}s ttft {r['mean_ttft_s']:.3f}s mean_k {r['mean_k']:.2f} "
                      f"accepted/drafted {r['accepted_fraction_of_proposed']:.2f} {r['tokens_per_s']:.1f} tok/s")
    return results


def run(s: Settings, target_dir: Path, draft_dir: Path) -> dict:
    from specd.worker.tokenizer import Tokenizer

    workloads = [workload(s, s.seed + rep) for rep in range(s.repeats)]
    mean_tokens = statistics.fmean(item.max_new_tokens for items in workloads for item in items)
    stack = LocalStack()
    started = time.monotonic()
    try:
        configs = router_configs(s)  # one router each, all over the same workers
        launched = stack.launch(target_dir, draft_dir, [RouterSettings(*c, s.max_batch_size) for c in configs],
                                targets=s.targets, drafts=s.drafts, log_dir=s.log_dir)
        routers = dict(zip(configs, launched))
        overhead = grpc_overhead(stack.addresses("target")[0], Tokenizer(target_dir).encode(workloads[0][0].prompt))
        _progress(f"gRPC overhead: {overhead}")
        for router in launched:
            asyncio.run(drive(router.address, workloads[0][:2], rate=100.0))  # warm-up: first-call costs

        def measure_capacity(when: str) -> dict[str, float]:
            slots = s.max_batch_size * PIPELINE_DEPTH * s.targets
            figures = {spec: burst_capacity(routers[("fcfs", spec)].address, workloads[0], slots)
                       for spec in capacity_specs(s)}
            _progress(f"capacity {when} the sweep (tokens/s, full batches): "
                      + ", ".join(f"{spec} {value:.1f}" for spec, value in figures.items()))
            return figures

        capacity = measure_capacity("before")
        results = sweep(plan(s, capacity, mean_tokens), workloads, {c: r.address for c, r in routers.items()},
                        s.slo_ttft_ms, s.slo_tpot_ms)
        after = measure_capacity("after")
        capacity = {spec: round(min(capacity[spec], after[spec]), 2) for spec in capacity}
    finally:
        stack.stop()
    for r in results:
        spec = r["speculation"]
        r["load"] = round(r["offered_tokens_per_s"] / capacity[spec], 3) if spec in capacity else None
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}
    return {"results": results, "goals": goals(results, capacity, s), "capacity_tokens_per_s": capacity,
            "grpc_overhead": overhead, "settings": settings,
            "models": {"target": str(target_dir), "draft": str(draft_dir)},
            "wall_seconds": round(time.monotonic() - started, 1)}


def format_report(report: dict) -> str:
    lines = [f"{'rate':>6} {'load':>5} {'policy':8} {'speculation':11} {'mean':>7} {'p50':>7} {'p99':>7} "
             f"{'ttft':>7} {'tok/s':>7} {'goodput':>8} {'mean_k':>6}"]
    for r in report["results"]:
        load = f"{r['load']:5.2f}" if r["load"] is not None else f"{'-':>5}"
        lines.append(f"{r['rate']:>6g} {load} {r['policy']:8} {r['speculation']:11} {r['mean_latency_s']:7.3f} "
                     f"{r['p50_latency_s']:7.3f} {r['p99_latency_s']:7.3f} {r['mean_ttft_s']:7.3f} "
                     f"{r['tokens_per_s']:7.1f} {r['goodput_tokens_per_s']:8.1f} {r['mean_k']:6.2f}")
    lines.append(f"capacity (tokens/s): {report['capacity_tokens_per_s']}")
    lines.append(f"goals: {report['goals']}")
    lines.append(f"gRPC overhead: {report['grpc_overhead']}")
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
