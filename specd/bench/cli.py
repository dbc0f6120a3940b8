"""`specd bench serve` and `specd bench decode` (`specd bench simulate` and `calibrate` are in
specd/sim/cli.py). Handlers turn the flags into the benchmarks' settings; heavy imports stay inside."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

# no torch-importing module at import time: the operator's image (no torch) builds this parser too
from specd.contract import DRAFTING_METHODS, MAX_BATCH_SIZE
from specd.errors import SpecdError
from specd.flags import add_model_flags, bounded, output_tokens, policies, positive_floats, speculations


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    _register_decode(bench_subparsers)
    _register_serve(bench_subparsers)


# -- specd bench decode --------------------------------------------------------------------------

def _register_decode(bench_subparsers: argparse._SubParsersAction) -> None:
    p = bench_subparsers.add_parser(
        "decode",
        help="speculative vs plain decoding on the local engine",
        description="Greedy decoding of held-out prompts, plain and speculative alternately, at "
                    "several batch sizes; prints speed-up, acceptance and the theoretical bound.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    p.add_argument("--k", type=int, default=4, help="speculation length (default: 4)")
    p.add_argument("--batch-sizes", default="1,4,8", help="comma-separated (default: 1,4,8)")
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens per prompt (default: 96)")
    p.add_argument("--rounds", type=int, default=2, help="alternating plain/speculative rounds (default: 2)")
    p.add_argument("--methods", default=",".join(DRAFTING_METHODS),
                   help=f"comma-separated drafting methods to run next to plain decoding "
                        f"(default: {','.join(DRAFTING_METHODS)})")
    p.add_argument("--no-peers", action="store_true",
                   help="skip the Hugging Face transformers peers (run by default when transformers is installed)")
    p.add_argument("--random-model", metavar="SHAPE",
                   help="race on a randomly initialised Llama-shaped pair instead of the demo models: 1b "
                        "(Llama 3.2 1B's shape) or small; the draft is the target's first two layers "
                        "(speed figures only: random weights say nothing of acceptance)")
    add_model_flags(p, placement=True)
    p.set_defaults(func=_decode)


def _decode(args: argparse.Namespace) -> int:
    import torch

    from specd.bench import decode
    from specd.demo.corpus import held_out_prompts, read_texts
    from specd.demo.paths import resolve_model_dirs
    from specd.worker.device import resolve_placement

    torch.set_num_threads(args.threads)
    placement = resolve_placement(args.device, args.dtype)
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        raise SpecdError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = [m for m in methods if m not in DRAFTING_METHODS]
    if unknown:
        raise SpecdError(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(DRAFTING_METHODS)})")
    settings = decode.DecodeBenchSettings(args.k, batch_sizes, args.prompts, args.max_new_tokens, args.rounds, methods)
    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    if args.random_model:
        from specd.demo.paths import cache_dir
        from specd.worker.random_model import write_random_pair

        tokenizer_json = (target_dir / "tokenizer.json").read_text()  # the demo's, for the prompts
        target_dir, draft_dir = write_random_pair(cache_dir() / "random-models", args.random_model, tokenizer_json,
                                                  placement.device, placement.dtype)
    result = decode.run(target_dir, draft_dir, held_out_prompts(args.prompts), settings,
                        log=lambda msg: print(msg, file=sys.stderr), peers=not args.no_peers,
                        held_out_texts=read_texts(held_out=True), placement=placement)
    if args.random_model:
        result["random_model"] = args.random_model
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


# -- specd bench serve ---------------------------------------------------------------------------

def _register_serve(bench_subparsers: argparse._SubParsersAction) -> None:
    p = bench_subparsers.add_parser(
        "serve", help="serving benchmark: Poisson arrivals over policies and speculation modes",
        description="Start workers on loopback and one router per (policy, speculation) pair. Measure each "
                    "speculation mode's capacity (tokens/s with the whole workload queued at once), then send the "
                    "same mixed workload (Python code and English prose prompts, mostly short outputs and a few "
                    "long ones) with Poisson arrivals at each load (a fraction of that capacity). Prints latency, "
                    "TTFT, throughput and goodput per run, the goals (laps-sd vs fcfs at the highest load where "
                    "fcfs is stable; goodput vs fixed:K and none) and the gRPC overhead per iteration.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--long", action="store_true",
                   help="the long run (more loads, requests and repeats: about an hour here) instead of the quick "
                        "default (two loads, 32 requests, 3 repeats: under 10 minutes here); the flags below "
                        "override either")
    p.add_argument("--loads", help="offered load as fractions of the measured capacity, comma-separated")
    p.add_argument("--rates", help="absolute arrival rates in requests/s instead of --loads, comma-separated")
    p.add_argument("--requests", type=int, help="requests per run, 2-256")
    p.add_argument("--repeats", type=int,
                   help="runs per rate and configuration with new arrival patterns, configurations taking turns; "
                        "the goals are medians over them")
    p.add_argument("--policies", default="fcfs,laps-sd", help="policies compared under each of "
                   "--compare-speculation (default: fcfs,laps-sd)")
    p.add_argument("--speculations", default="none,fixed:2,fixed:4,goodput",
                   help="speculation modes compared under laps-sd, none (alias off) meaning no speculation "
                        "(default: none,fixed:2,fixed:4,goodput)")
    p.add_argument("--compare-speculation", default="goodput",
                   help="speculation modes under which the policies are compared, each at loads of its own "
                        "capacity (default: goodput)")
    p.add_argument("--max-batch-size", type=bounded("--max-batch-size", MAX_BATCH_SIZE), default=2,
                   help="router batch size (default: 2)")
    p.add_argument("--output-tokens", metavar="MEDIAN,SIGMA,MAX",
                   help="log-normal output lengths (default: the heavy tail of chat traces scaled to the demo "
                        "models, docs/serving.md)")
    p.add_argument("--targets", type=int, default=1, help="target worker replicas (default: 1)")
    p.add_argument("--drafts", type=int, default=1, help="draft worker replicas (default: 1)")
    add_model_flags(p, threads=False)
    p.add_argument("--seed", type=int, default=0, help="workload and arrival seed (default: 0)")
    p.add_argument("--log-dir", help="write worker and router logs here")
    p.add_argument("--slo-ttft-ms", type=float, help="request_goodput counts requests whose TTFT is at most this")
    p.add_argument("--slo-tpot-ms", type=float,
                   help="request_goodput counts requests whose time per output token is at most this")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from specd.bench import serve
    from specd.demo.paths import resolve_model_dirs

    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    base = serve.Settings.long_run() if args.long else serve.Settings()
    if args.requests is not None and not 2 <= args.requests <= 256:
        raise SpecdError(f"--requests must be in [2, 256] (the router's queue), got {args.requests}")
    given = {
        "loads": positive_floats("--loads", args.loads) if args.loads else None,
        "rates": positive_floats("--rates", args.rates) if args.rates else None,
        "requests": args.requests, "repeats": args.repeats,
        "output_tokens": output_tokens("--output-tokens", args.output_tokens) if args.output_tokens else None,
    }
    settings = replace(
        base, **{k: v for k, v in given.items() if v is not None},
        policies=policies("--policies", args.policies),
        speculations=speculations("--speculations", args.speculations),
        compare_speculations=speculations("--compare-speculation", args.compare_speculation),
        max_batch_size=args.max_batch_size, targets=args.targets, drafts=args.drafts, seed=args.seed,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms)
    report = serve.run(settings, target_dir, draft_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(serve.format_report(report))
    return 0
