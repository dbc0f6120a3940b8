"""`specd bench simulate`: the scheduling simulator's reproductions (docs/scheduling.md)."""

from __future__ import annotations

import argparse
import json
import sys

from specd.contract import MAX_BATCH_SIZE
from specd.errors import SpecdError


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    from specd.flags import add_model_flags, bounded

    # the operator's image builds this parser: nothing here may import the simulator's engine
    from specd.sim.profiles import NAMED
    from specd.sim.workloads import MIXES, RISE_AND_FALL, SERVED_BATCH_SIZE

    p = bench_subparsers.add_parser(
        "simulate", help="scheduling simulator: LAPS-SD and SmartSpec reproduced on the router's own code",
        description="A discrete-event simulation of the router's own decision code (policies, goodput "
                    "speculation, batching) over simulated workers whose step times come from a profile. "
                    "Reports LAPS-SD against fcfs/las/sjf across loads, goodput speculation against fixed k and "
                    "no speculation across rates, LAPS-SD's estimate error and the router's decision time.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--profile", default="h100-70b-tp8",
                   help=f"step-time profile: {', '.join(NAMED)}, or a file from `specd bench calibrate` "
                        "(default: h100-70b-tp8)")
    p.add_argument("--workload", default="paper", choices=list(MIXES), help="request mix (default: paper)")
    p.add_argument("--requests", type=int, default=1000, help="requests per run (default: 1000)")
    p.add_argument("--max-batch-size", type=bounded("--max-batch-size", MAX_BATCH_SIZE), default=8,
                   help="router batch size (default: 8)")
    p.add_argument("--targets", type=int, default=1, help="target replicas (default: 1)")
    p.add_argument("--drafts", type=int, default=1, help="draft replicas (default: 1)")
    p.add_argument("--loads", default="0.7,0.9,0.95", help="policy comparison loads, fractions of fcfs capacity")
    p.add_argument("--speculation-loads", default="0.2,0.5,0.8,0.95",
                   help="speculation comparison loads, fractions of the capacity without speculation")
    p.add_argument("--policies", default="fcfs,las,sjf,laps-sd", help="policies compared (default: all four)")
    p.add_argument("--speculations", default=",".join(["none", *(f"fixed:{k}" for k in range(1, 9)), "goodput"]),
                   help="speculation modes compared (default: none, fixed:1..8, goodput)")
    p.add_argument("--decision-queued", default="1000,10000",
                   help="queue lengths at which the decision time is measured (default: 1000,10000)")
    p.add_argument("--routers", default="", help="router scale-out: router counts to compare, e.g. 1,2,4")
    p.add_argument("--scale-targets", type=int, default=0,
                   help="also simulate this many target (and draft) replicas at --scale-rate (e.g. 1000)")
    p.add_argument("--scale-rate", type=float, default=10_000.0, help="requests/s of the scale run")
    p.add_argument("--scale-seconds", type=float, default=5.0, help="seconds of arrivals in the scale run")
    p.add_argument("--validate", metavar="SERVE_JSON",
                   help="instead of the reproductions, replay this `specd bench serve --json` report on --profile (a "
                        "file from `specd bench calibrate`): the simulator's error against each measured mean latency")
    p.add_argument("--validate-costs", default="run",
                   help="with --validate, the step costs replayed: those each configuration's router measured during "
                        "its own runs (default), or the calibration's (the workers driven alone)")
    p.add_argument("--seed", type=int, default=0, help="first workload seed (default: 0)")
    p.add_argument("--seeds", type=int, default=3,
                   help="workloads the policy comparison runs on (seed, seed+1, ...); its ratios are their median "
                        "(default: 3)")
    p.add_argument("--jobs", type=int, help="processes for independent runs (default: the CPUs)")
    p.set_defaults(func=_simulate)

    a = bench_subparsers.add_parser(
        "autoscale", help="autoscaling simulator: fixed pools, queue-only and speculation-aware autoscaling",
        description="On a load that rises and falls (piecewise-constant Poisson rates), the simulated router's "
                    "own figures drive three ways of sizing the target and draft pools: fixed at their maxima, "
                    "queue-only (targets on queue per replica, drafts in proportion), and speculation-aware "
                    "(operator/autoscaling.py). Replicas start after --startup-seconds; removed ones drain. "
                    "Reports goodput, mean/p99 latency and replica-seconds per pool (docs/autoscaling.md).")
    a.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a.add_argument("--profile", default="h100-70b-tp8", help="step-time profile (default: h100-70b-tp8)")
    a.add_argument("--workload", default="paper", choices=list(MIXES), help="request mix (default: paper)")
    a.add_argument("--max-batch-size", type=bounded("--max-batch-size", MAX_BATCH_SIZE),
                   default=SERVED_BATCH_SIZE,
                   help=f"router batch size (default: {SERVED_BATCH_SIZE}, vLLM's default max_num_seqs)")
    a.add_argument("--targets", type=int, default=2, help="target pool maximum (fixed: always) (default: 2)")
    a.add_argument("--drafts", type=int, default=2, help="draft pool maximum (fixed: always) (default: 2)")
    a.add_argument("--peak-load", type=float, default=0.8,
                   help="peak rate as a share of the capacity of --targets targets (default: 0.8)")
    phases = ",".join(f"{seconds:g}:{share:g}" for seconds, share in RISE_AND_FALL)
    a.add_argument("--phases", default=phases, help=f"the load: seconds:share-of-peak, ... (default: {phases})")
    a.add_argument("--queue-per-target", type=float, default=128.0,
                   help="target pool aim, requests per target (default: 128, half a batch of 256; a target's "
                        "2 lanes hold 512)")
    a.add_argument("--draft-utilisation", type=float, default=None,
                   help="draft pool aim, busy share per draft replica (default: the resource's, "
                        "draft.utilisation)")
    a.add_argument("--up-window", type=float, default=15.0, help="scale-up window, seconds (default: 15)")
    a.add_argument("--down-window", type=float, default=60.0, help="scale-down window, seconds (default: 60)")
    a.add_argument("--startup-seconds", type=float, default=20.0, help="a new replica's start-up (default: 20)")
    a.add_argument("--poll-seconds", type=float, default=5.0, help="seconds between polls (default: 5)")
    a.add_argument("--ratios", default="0.5,1,2",
                   help="queue-only's drafts per target, its latency curve (default: 0.5,1,2)")
    a.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    a.add_argument("--jobs", type=int, default=2, help="processes for the runs (default: 2)")
    a.set_defaults(func=_autoscale)

    c = bench_subparsers.add_parser(
        "calibrate", help="step-time profile of this machine's workers, for `specd bench simulate --profile`",
        description="Start a target and a draft worker on loopback, drive Prefill/Propose/Verify at several batch "
                    "sizes and speculation lengths, fit each role's pass time to base + per_token * tokens + "
                    "per_context * context from the workers' own measured step costs, and record acceptance per "
                    "kind of prompt. Prints the profile as JSON (or writes it to --output).")
    c.add_argument("--output", help="write the profile here instead of stdout")
    add_model_flags(c, threads=False)
    c.add_argument("--iterations", type=int, default=6, help="iterations per (batch size, k) (default: 6)")
    c.set_defaults(func=_calibrate)


def _simulate(args: argparse.Namespace) -> int:
    from specd.flags import policies, positive_floats, speculations
    from specd.sim import report

    if args.requests < 10:
        raise SpecdError(f"--requests must be at least 10, got {args.requests}")
    settings = report.Settings(
        profile=args.profile, workload=args.workload, requests=args.requests, max_batch_size=args.max_batch_size,
        targets=args.targets, drafts=args.drafts, loads=positive_floats("--loads", args.loads),
        speculation_loads=positive_floats("--speculation-loads", args.speculation_loads),
        policies=policies("--policies", args.policies),
        speculations=speculations("--speculations", args.speculations),
        decision_queued=[int(x) for x in positive_floats("--decision-queued", args.decision_queued)],
        routers=[int(x) for x in args.routers.split(",") if x], scale_targets=args.scale_targets,
        scale_rate=args.scale_rate, scale_seconds=args.scale_seconds, seed=args.seed, seeds=args.seeds,
        jobs=args.jobs)
    if args.validate:  # the validation alone: the reproductions are for the named profiles
        from pathlib import Path

        from specd.sim.validate import validate

        checked = validate(Path(args.profile), Path(args.validate), args.validate_costs)
        print(json.dumps(checked, indent=2) if args.json else report.format_validation(checked))
        return 0
    result = report.run(settings, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else report.format_report(result))
    return 0


def _autoscale(args: argparse.Namespace) -> int:
    import dataclasses

    from specd.contract import MAX_QUEUED_REQUESTS
    from specd.flags import positive_floats
    from specd.router.config import RouterConfig
    from specd.sim import autoscale
    from specd.sim.engine import Setup
    from specd.sim.experiments import capacity
    from specd.sim.profiles import load_profile
    from specd.sim.workloads import MIXES, Workload

    try:
        phases = tuple((float(d), float(s)) for d, s in (p.split(":") for p in args.phases.split(",")))
    except ValueError:
        raise SpecdError(f"--phases: seconds:share pairs separated by commas, got {args.phases!r}") from None
    profile = load_profile(args.profile)
    # admission never refuses here: the comparison is on latency (a refusal would count as a failure)
    assert MAX_QUEUED_REQUESTS.maximum is not None
    config = RouterConfig(max_batch_size=args.max_batch_size, max_queued_requests=MAX_QUEUED_REQUESTS.maximum)
    per_target = capacity(Setup(config, profile), Workload(MIXES[args.workload], 400, args.seed))
    policy = dataclasses.replace(autoscale.default_policy(args.targets, args.drafts, args.queue_per_target),
                                 scale_up_window_s=args.up_window, scale_down_window_s=args.down_window)
    if args.draft_utilisation is not None:
        policy = dataclasses.replace(policy, draft_utilisation=args.draft_utilisation)
    bench = autoscale.Bench(profile, config, policy, args.peak_load * per_target * args.targets,
                            MIXES[args.workload], phases, args.startup_seconds, args.poll_seconds, args.seed)
    result = autoscale.compare(bench, tuple(positive_floats("--ratios", args.ratios)), jobs=args.jobs)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("| config | goodput tok/s | mean s | p99 s | target replica-s | draft replica-s | failed | lost tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['config']} | {r['goodput_tokens_per_s']:.0f} | {r['mean_latency_s']:.2f} | "
              f"{r['p99_latency_s']:.1f} | {r['target_replica_seconds']:.0f} | {r['draft_replica_seconds']:.0f} | "
              f"{r['failed_requests']} | {r['lost_tokens']} |")
    print({k: v for k, v in result.items() if k not in ("rows", "settings")})
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from specd.demo.paths import resolve_model_dirs
    from specd.sim.calibrate import calibrate

    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    profile = json.dumps(calibrate(Path(target_dir), Path(draft_dir), iterations=args.iterations), indent=2)
    if args.output:
        Path(args.output).write_text(profile + "\n")
    else:
        print(profile)
    return 0
