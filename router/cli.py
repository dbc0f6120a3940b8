"""Serving-plane commands: `specd worker`, `specd router`, `specd up`, `specd stats`, `specd bench serve`,
and `generate_remote` (what `specd generate --address` runs). Heavy imports stay inside handlers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from specd import contract
from specd.contract import DRAFT_METHODS, MAX_BATCH_SIZE, POLICIES
from specd.demo.paths import resolve_model_dirs
from specd.errors import SpecdError
from specd.worker.cli import add_placement_args


def register(subparsers, bench_subparsers) -> None:
    _register_worker(subparsers)
    _register_router(subparsers)
    _register_up(subparsers)
    _register_stats(subparsers)
    _register_bench(bench_subparsers)


def _speculation(value: str) -> str:
    """A speculation mode as the command line writes it, canonical: `off` becomes `none`."""
    try:
        mode, k = contract.parse_speculation(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return contract.speculation_label(mode, k)


def _bounded(flag: str, bounds: contract.Range[int]) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected an integer, got {text!r}") from None
        if value not in bounds:
            raise argparse.ArgumentTypeError(f"{flag} must be in {bounds.describe()}, got {value}")
        return value
    return parse


def add_scheduling_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--policy/--speculation/--max-batch-size; without defaults they only override a config file."""
    policy, speculation, batch = contract.DEFAULT_POLICY, contract.DEFAULT_SPECULATION_MODE, MAX_BATCH_SIZE.default
    parser.add_argument("--policy", choices=POLICIES, default=policy if defaults else None,
                        help="scheduling policy" + (f" (default: {policy})" if defaults else ""))
    parser.add_argument("--speculation", type=_speculation, default=speculation if defaults else None,
                        help="speculation length control: none (alias off), fixed:K (K in "
                             f"{contract.K.describe()}) or goodput"
                             + (f" (default: {speculation})" if defaults else ""))
    parser.add_argument("--max-batch-size", type=_bounded("--max-batch-size", MAX_BATCH_SIZE),
                        default=batch if defaults else None,
                        help=f"requests per iteration batch, {MAX_BATCH_SIZE.describe()}"
                             + (f" (default: {batch})" if defaults else ""))


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


# -- specd worker --------------------------------------------------------------------------------

def _register_worker(subparsers) -> None:
    p = subparsers.add_parser("worker", help="run a draft or target worker (gRPC)",
                              description="Serve one model as a draft or target worker over gRPC "
                                          "(specd.v1.DraftWorker / specd.v1.TargetWorker, with health and reflection).")
    p.add_argument("--role", choices=("target", "draft"), required=True)
    p.add_argument("--model", required=True, help="model directory (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="target only: processes the model is sharded over")
    p.add_argument("--draft-method", choices=DRAFT_METHODS, default=contract.DEFAULT_DRAFT_METHOD,
                   help="how drafts are made: model (a separate draft worker proposes them); early-exit "
                        "(Kangaroo), hierarchical (HiSpec) or ngram (prompt lookup), drafted inside the target "
                        "worker; specee (SpecEE early exits inside the target: APPROXIMATE, greedy outputs may "
                        "differ from the target's); none (plain decoding) "
                        f"(default: {contract.DEFAULT_DRAFT_METHOD})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: more threads thrash on a shared CPU)")
    p.add_argument("--kv-budget-mib", type=float, default=512, help="KV cache memory budget (default: 512)")
    add_placement_args(p)
    _add_metrics_port(p)
    p.add_argument("--grace", type=float, default=30, help="seconds to finish running calls after SIGTERM")
    p.set_defaults(func=_worker)


def _add_metrics_port(p) -> None:
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port (0: any free port; default: none; "
                        f"the operator's pods use {contract.METRICS_PORT.default})")


def _worker(args) -> int:
    import asyncio

    import torch

    from specd.worker.servers.service import load_core, serve_worker

    if args.role == "draft" and args.draft_method not in contract.DRAFT_POOL_METHODS:
        raise SpecdError(f"a draft worker makes drafts with a model: --draft-method {args.draft_method} "
                         "is for target workers")
    if args.threads < 1:
        raise SpecdError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    _logging()
    core = load_core(args.role, args.model, args.tensor_parallel_size, args.kv_budget_mib, args.draft_method,
                     args.device, args.dtype)
    asyncio.run(serve_worker(core, args.host, args.port, args.grace, args.metrics_port))
    return 0


# -- specd router --------------------------------------------------------------------------------

def _register_router(subparsers) -> None:
    p = subparsers.add_parser("router", help="run the router (public gRPC API, LAPS-SD, goodput speculation)",
                              description="Serve specd.v1.Specd: schedule requests over draft and target workers. "
                                          "Workers come from --target/--draft, or from Kubernetes EndpointSlices "
                                          "when the config has a discovery block.")
    p.add_argument("--config", help="router YAML (policy, speculation, maxBatchSize, discovery, ...)")
    p.add_argument("--port", type=int, default=contract.ROUTER_PORT.default,
                   help=f"port to listen on (default: {contract.ROUTER_PORT.default}; 0: any free port)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    p.add_argument("--target", action="append", default=[], metavar="HOST:PORT", help="a target worker (repeatable)")
    p.add_argument("--draft", action="append", default=[], metavar="HOST:PORT", help="a draft worker (repeatable)")
    add_scheduling_flags(p, defaults=False)
    p.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for a target worker")
    p.add_argument("--grace", type=float, default=30, help="seconds to finish admitted requests after SIGTERM")
    _add_metrics_port(p)
    p.add_argument("--http-port", type=int, default=None,
                   help="serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models) "
                        f"on this port (0: any free port; default: none; the operator's routers use "
                        f"{contract.HTTP_PORT.default})")
    p.set_defaults(func=_router)


def router_config(args):
    from dataclasses import replace

    from specd.router.config import RouterConfig, load_config

    config = load_config(args.config) if args.config else RouterConfig()
    if args.policy:
        config = replace(config, policy=args.policy)
    if args.speculation:
        config = config.with_speculation(args.speculation)
    if args.max_batch_size is not None:
        config = replace(config, max_batch_size=args.max_batch_size)
    return config


def _discovery(args, config):
    from specd.router.discovery import StaticDiscovery

    if args.target:
        return StaticDiscovery(args.target, args.draft)
    if args.draft:
        raise SpecdError("--draft needs at least one --target")
    d = config.discovery
    if d is None or not d.target_service:
        raise SpecdError("no workers: pass --target HOST:PORT (and --draft), or a config with a discovery block")
    from specd.router.k8s_discovery import EndpointSliceWatcher

    services, ports = {"target": d.target_service}, {"target": d.target_port}
    if d.draft_service:
        services["draft"], ports["draft"] = d.draft_service, d.draft_port
    return EndpointSliceWatcher(d.namespace, services, ports)


def _router(args) -> int:
    import asyncio

    from specd.router.service import serve_router

    config = router_config(args)
    discovery = _discovery(args, config)
    _logging()
    asyncio.run(serve_router(config, discovery, args.host, args.port, args.ready_timeout, args.grace,
                             args.metrics_port, args.http_port))
    return 0


# -- specd up ------------------------------------------------------------------------------------

def _register_up(subparsers) -> None:
    p = subparsers.add_parser("up", help="run router + draft + target workers locally on loopback",
                              description="Start target and draft workers and a router as processes on 127.0.0.1 "
                                          "with the demo models (or --target-model/--draft-model), print the "
                                          "router's address, and stop everything on Ctrl-C or SIGTERM.")
    p.add_argument("--targets", type=int, default=1, help="target worker replicas (default: 1)")
    p.add_argument("--drafts", type=int, default=1,
                   help="draft worker replicas for --draft-method model (default: 1; 0: no speculation)")
    p.add_argument("--draft-method", choices=DRAFT_METHODS, default=contract.DEFAULT_DRAFT_METHOD,
                   help="model (draft workers); early-exit, hierarchical or ngram (drafted inside the target "
                        "workers: no draft workers start); specee (APPROXIMATE early exits inside the target; "
                        f"use with --speculation none); none (default: {contract.DEFAULT_DRAFT_METHOD})")
    add_scheduling_flags(p, defaults=True)
    p.add_argument("--port", type=int, default=contract.ROUTER_PORT.default,
                   help=f"router port (default: {contract.ROUTER_PORT.default}; 0: any free port)")
    p.add_argument("--target-model", help="target model directory (default: the demo target)")
    p.add_argument("--draft-model", help="draft model directory (default: the demo draft)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker process (default: 1)")
    p.set_defaults(func=_up)


def _up(args) -> int:
    import signal
    import threading

    from specd.router.local import LocalStack, free_port

    if args.targets < 1 or args.drafts < 0:
        raise SpecdError("--targets must be >= 1 and --drafts >= 0")
    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    drafts = args.drafts if args.draft_method in contract.DRAFT_POOL_METHODS else 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack()
    try:
        for _ in range(args.targets):
            stack.start_worker("target", target_dir, args.threads, draft_method=args.draft_method)
        for _ in range(drafts):
            stack.start_worker("draft", draft_dir, args.threads)
        for worker in stack.workers:
            stack.wait_serving(worker, 300)
            print(f"{worker.name} worker on {worker.address}", file=sys.stderr)
        router = stack.start_router(args.policy, args.speculation, args.max_batch_size, args.port or free_port())
        stack.wait_serving(router, 120)
        print(router.address)  # one per line, for scripts: gRPC, then the OpenAI base URL, then metrics
        print(f"http: http://{router.http}/v1")
        print(f"metrics: http://{router.metrics}/metrics", flush=True)
        print(f"specd is serving on {router.address} (policy {args.policy}, speculation {args.speculation}, "
              f"draft method {args.draft_method}); "
              f"try: specd generate --address {router.address} --prompt 'def '; Ctrl-C stops", file=sys.stderr)
        while not stop.wait(0.5):
            dead = [p.name for p in [router, *stack.workers] if not p.alive()]
            if dead:
                raise SpecdError(f"{', '.join(dead)} exited; stopping")
    finally:
        print("stopping (draining the router, then the workers)", file=sys.stderr)
        stack.stop()
    return 0


# -- specd stats ---------------------------------------------------------------------------------

def _register_stats(subparsers) -> None:
    p = subparsers.add_parser("stats", help="a router's live figures: acceptance, goodput, k, queue",
                              description="Ask a running router (specd up, specd router, or a router Service "
                                          "reached through kubectl port-forward) for its live figures.")
    address = f"127.0.0.1:{contract.ROUTER_PORT.default}"
    p.add_argument("--address", default=address, help=f"router HOST:PORT (default: {address})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_stats)


def _stats(args) -> int:
    import dataclasses
    import json

    from specd.client import Client, SpecdClientError

    try:
        with Client(args.address) as client:
            stats = client.stats(timeout=5)
    except SpecdClientError as exc:
        raise SpecdError(f"router {args.address}: {exc}") from None
    if args.json:
        print(json.dumps(dataclasses.asdict(stats)))
        return 0
    acceptance = "-" if stats.acceptance_rate is None else f"{stats.acceptance_rate:.3f}"
    print(f"policy {stats.policy}, speculation {stats.speculation}, current k {stats.current_k}\n"
          f"acceptance {acceptance}, goodput {stats.goodput_tokens_per_s:.1f} tokens/s (last minute)\n"
          f"requests: {stats.running_requests} running, {stats.queued_requests} queued, "
          f"{stats.finished_requests} finished\n"
          f"workers: {stats.live_targets} target, {stats.live_drafts} draft")
    return 0


# -- specd bench serve ---------------------------------------------------------------------------

def _register_bench(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "serve", help="serving benchmark: Poisson arrivals over policies and speculation modes",
        description="Start workers on loopback and one router per (policy, speculation) pair. Measure each "
                    "speculation mode's capacity (tokens/s with the whole workload queued at once), then send the "
                    "same mixed workload (Python code and English prose prompts, mostly short outputs and a few "
                    "long ones) with Poisson arrivals at each load (a fraction of that capacity). Prints latency, "
                    "TTFT, throughput and goodput per run, the goals (laps-sd vs fcfs at the highest load where "
                    "fcfs is stable; goodput vs fixed:K and none) and the gRPC overhead per iteration.")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--loads", default="0.6,0.9,0.95",
                   help="offered load as fractions of the measured capacity, comma-separated (default: 0.6,0.9,0.95)")
    p.add_argument("--rates", help="absolute arrival rates in requests/s instead of --loads, comma-separated")
    p.add_argument("--requests", type=int, default=96, help="requests per run, 2-256 (default: 96)")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs per rate and configuration with new arrival patterns, configurations taking turns "
                        "(default: 2)")
    p.add_argument("--policies", default="fcfs,laps-sd", help="policies compared under each of "
                   "--compare-speculation (default: fcfs,laps-sd)")
    p.add_argument("--speculations", default="none,fixed:2,fixed:4,goodput",
                   help="speculation modes compared under laps-sd, none (alias off) meaning no speculation "
                        "(default: none,fixed:2,fixed:4,goodput)")
    p.add_argument("--compare-speculation", default="goodput",
                   help="speculation modes under which the policies are compared, each at loads of its own "
                        "capacity (default: goodput)")
    p.add_argument("--max-batch-size", type=_bounded("--max-batch-size", MAX_BATCH_SIZE), default=2,
                   help="router batch size (default: 2)")
    p.add_argument("--long-fraction", type=float, default=0.25, help="share of long requests (default: 0.25)")
    p.add_argument("--short-tokens", default="8,24", metavar="LOW,HIGH",
                   help="output length range of short requests (default: 8,24)")
    p.add_argument("--long-tokens", default="96,160", metavar="LOW,HIGH",
                   help="output length range of long requests (default: 96,160)")
    p.add_argument("--targets", type=int, default=1, help="target worker replicas (default: 1)")
    p.add_argument("--drafts", type=int, default=1, help="draft worker replicas (default: 1)")
    p.add_argument("--target-model", help="target model directory (default: the demo target)")
    p.add_argument("--draft-model", help="draft model directory (default: the demo draft)")
    p.add_argument("--seed", type=int, default=0, help="workload and arrival seed (default: 0)")
    p.add_argument("--log-dir", help="write worker and router logs here")
    p.add_argument("--slo-ttft-ms", type=float, help="request_goodput counts requests whose TTFT is at most this")
    p.add_argument("--slo-tpot-ms", type=float,
                   help="request_goodput counts requests whose time per output token is at most this")
    p.set_defaults(func=_bench_serve)


def _bench_serve(args) -> int:
    import json
    from pathlib import Path

    from specd.router import bench

    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    if not 2 <= args.requests <= 256:
        raise SpecdError(f"--requests must be in [2, 256] (the router's queue), got {args.requests}")
    if not 0 <= args.long_fraction <= 1:
        raise SpecdError(f"--long-fraction must be in [0, 1], got {args.long_fraction}")
    settings = bench.Settings(
        loads=_positive_floats("--loads", args.loads),
        rates=_positive_floats("--rates", args.rates) if args.rates else None,
        requests=args.requests, repeats=args.repeats,
        policies=_policies("--policies", args.policies),
        speculations=_speculations("--speculations", args.speculations),
        compare_speculations=_speculations("--compare-speculation", args.compare_speculation),
        max_batch_size=args.max_batch_size,
        short_tokens=_length_range("--short-tokens", args.short_tokens),
        long_tokens=_length_range("--long-tokens", args.long_tokens),
        long_fraction=args.long_fraction, targets=args.targets, drafts=args.drafts, seed=args.seed,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms)
    report = bench.run(settings, target_dir, draft_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(bench.format_report(report))
    return 0


def _policies(flag: str, text: str) -> list[str]:
    policies = text.split(",")
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise SpecdError(f"{flag}: {', '.join(unknown)} not among {', '.join(POLICIES)}")
    return policies


def _speculations(flag: str, text: str) -> list[str]:
    try:
        return [_speculation(value) for value in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise SpecdError(f"{flag}: {exc}") from None


def _length_range(flag: str, text: str) -> tuple[int, int]:
    low, _, high = text.partition(",")
    if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
        raise SpecdError(f"{flag}: expected LOW,HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return int(low), int(high)


def _positive_floats(flag: str, text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise SpecdError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise SpecdError(f"{flag}: every value must be positive, got {text!r}")
    return values


# -- specd generate --address --------------------------------------------------------------------

def generate_remote(args) -> int:
    """`specd generate --address HOST:PORT --prompt ...`: stream a generation from a router via the SDK.

    Reads args.address, args.prompt and, when present, args.max_tokens, args.temperature,
    args.top_p, args.top_k, args.seed, args.timeout and args.k (the request's speculation cap;
    0 turns speculation off for it).
    """
    from specd.client import Client, SpecdClientError

    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731 - flags are the integrator's
    k = get("k")
    try:
        with Client(args.address) as client:
            final = None
            for chunk in client.stream(args.prompt, max_new_tokens=get("max_tokens", 64) or 64,
                                       temperature=get("temperature", 0.0) or 0.0, top_p=get("top_p", 1.0) or 1.0,
                                       top_k=get("top_k", 0) or 0, seed=get("seed"),
                                       speculation=k != 0, max_k=k or 0, timeout=get("timeout")):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                final = chunk
    except SpecdClientError as exc:
        raise SpecdError(str(exc)) from None
    sys.stdout.write("\n")
    if final is not None and final.usage is not None and final.timing is not None:
        u = final.usage
        rate = u.draft_tokens_accepted / u.draft_tokens_proposed if u.draft_tokens_proposed else 0.0
        print(f"[{u.generated_tokens} tokens in {final.timing.total_seconds:.2f}s, {u.iterations} iterations, "
              f"acceptance {rate:.0%}, ttft {final.timing.ttft_seconds * 1000:.0f} ms]", file=sys.stderr)
    return 0
