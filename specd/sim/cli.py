"""`specd bench simulate`: the scheduling simulator's reproductions (docs/scheduling.md)."""

from __future__ import annotations

import argparse
import json
import sys

from specd.contract import MAX_BATCH_SIZE
from specd.errors import SpecdError


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    from specd.flags import add_model_flags, bounded
    from specd.sim.profiles import NAMED
    from specd.sim.workloads import MIXES

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
    p.add_argument("--seed", type=int, default=0, help="first workload seed (default: 0)")
    p.add_argument("--seeds", type=int, default=3,
                   help="workloads the policy comparison runs on (seed, seed+1, ...); its ratios are their median "
                        "(default: 3)")
    p.add_argument("--jobs", type=int, help="processes for independent runs (default: the CPUs)")
    p.set_defaults(func=_simulate)

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

        checked = validate(Path(args.profile), Path(args.validate))
        print(json.dumps(checked, indent=2) if args.json else report.format_validation(checked))
        return 0
    result = report.run(settings, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else report.format_report(result))
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
