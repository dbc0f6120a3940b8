"""The router's commands: `specd router`, `specd up`, `specd stats`, and the remote generation that
`specd generate --address` and `specd demo` stream (`stream_generation`). Handlers turn the parsed
flags into typed arguments; heavy imports stay inside them."""

from __future__ import annotations

import argparse
import sys

from specd import contract
from specd.contract import DRAFT_METHODS, MAX_BATCH_SIZE, POLICIES
from specd.demo.paths import resolve_model_dirs
from specd.errors import SpecdError
from specd.flags import add_metrics_port_flag, add_model_flags, bounded, log_to_stderr, speculation


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    _register_router(subparsers)
    _register_up(subparsers)
    _register_stats(subparsers)


def add_scheduling_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--policy/--speculation/--max-batch-size; without defaults they only override a config file."""
    policy, mode, batch = contract.DEFAULT_POLICY, contract.DEFAULT_SPECULATION_MODE, MAX_BATCH_SIZE.default
    parser.add_argument("--policy", choices=POLICIES, default=policy if defaults else None,
                        help="scheduling policy" + (f" (default: {policy})" if defaults else ""))
    parser.add_argument("--speculation", type=speculation, default=mode if defaults else None,
                        help="speculation length control: none (alias off), fixed:K (K in "
                             f"{contract.K.describe()}) or goodput"
                             + (f" (default: {mode})" if defaults else ""))
    parser.add_argument("--max-batch-size", type=bounded("--max-batch-size", MAX_BATCH_SIZE),
                        default=batch if defaults else None,
                        help=f"requests per iteration batch, {MAX_BATCH_SIZE.describe()}"
                             + (f" (default: {batch})" if defaults else ""))


# -- specd router --------------------------------------------------------------------------------

def _register_router(subparsers: argparse._SubParsersAction) -> None:
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
    add_metrics_port_flag(p)
    p.add_argument("--http-port", type=int, default=None,
                   help="serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models) "
                        f"on this port (0: any free port; default: none; the operator's routers use "
                        f"{contract.HTTP_PORT.default})")
    p.set_defaults(func=_router)


def _router(args: argparse.Namespace) -> int:
    import asyncio

    from specd.router.service import serve_router

    config = _router_config(args.config, args.policy, args.speculation, args.max_batch_size)
    discovery = _discovery(args.target, args.draft, config)
    log_to_stderr()
    asyncio.run(serve_router(config, discovery, args.host, args.port, args.ready_timeout, args.grace,
                             args.metrics_port, args.http_port))
    return 0


def _router_config(path: str | None, policy: str | None, speculation: str | None, max_batch_size: int | None):
    """The config file's settings (or the defaults), overridden by the flags given."""
    from dataclasses import replace

    from specd.router.config import RouterConfig, load_config

    config = load_config(path) if path else RouterConfig()
    if policy:
        config = replace(config, policy=policy)
    if speculation:
        config = config.with_speculation(speculation)
    if max_batch_size is not None:
        config = replace(config, max_batch_size=max_batch_size)
    return config


def _discovery(targets: list[str], drafts: list[str], config):
    from specd.router.discovery import StaticDiscovery

    if targets:
        return StaticDiscovery(targets, drafts)
    if drafts:
        raise SpecdError("--draft needs at least one --target")
    d = config.discovery
    if d is None or not d.target_service:
        raise SpecdError("no workers: pass --target HOST:PORT (and --draft), or a config with a discovery block")
    from specd.router.k8s_discovery import EndpointSliceWatcher, Peers

    services, ports = {"target": d.target_service}, {"target": d.target_port}
    if d.draft_service:
        services["draft"], ports["draft"] = d.draft_service, d.draft_port
    return EndpointSliceWatcher(d.namespace, services, ports, peers=Peers.from_env())


# -- specd up ------------------------------------------------------------------------------------

def _register_up(subparsers: argparse._SubParsersAction) -> None:
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
    add_model_flags(p)
    p.set_defaults(func=_up)


def _up(args: argparse.Namespace) -> int:
    import signal
    import threading

    from specd.router.local import LocalStack, RouterSettings

    if args.targets < 1 or args.drafts < 0:
        raise SpecdError("--targets must be >= 1 and --drafts >= 0")
    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    router_settings = RouterSettings(args.policy, args.speculation, args.max_batch_size, args.port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack()
    try:
        (router,) = stack.launch(target_dir, draft_dir, [router_settings], targets=args.targets, drafts=args.drafts,
                                 threads=args.threads, draft_method=args.draft_method,
                                 on_worker_serving=lambda w: print(f"{w.name} worker on {w.address}", file=sys.stderr))
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

def _register_stats(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stats", help="a router's live figures: acceptance, goodput, k, queue",
                              description="Ask a running router (specd up, specd router, or a router Service "
                                          "reached through kubectl port-forward) for its live figures.")
    address = f"127.0.0.1:{contract.ROUTER_PORT.default}"
    p.add_argument("--address", default=address, help=f"router HOST:PORT (default: {address})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_stats)


def _stats(args: argparse.Namespace) -> int:
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


# -- streaming a generation from a router --------------------------------------------------------

def stream_generation(address: str, prompt: str, max_tokens: int | None = 64, *, temperature: float | None = 0.0,
                      top_p: float | None = 1.0, top_k: int | None = 0, seed: int | None = None,
                      k: int | None = None, timeout: float | None = None) -> int:
    """Stream a generation from the router at `address` to stdout through the SDK, and a summary
    line to stderr (`specd generate --address`, `specd demo`). `k` caps the request's speculation
    (0 turns it off for this request; None leaves it to the router); a None or 0 sampling setting
    means its default."""
    from specd.client import Client, SpecdClientError

    try:
        with Client(address) as client:
            final = None
            for chunk in client.stream(prompt, max_new_tokens=max_tokens or 64, temperature=temperature or 0.0,
                                       top_p=top_p or 1.0, top_k=top_k or 0, seed=seed,
                                       speculation=k != 0, max_k=k or 0, timeout=timeout):
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


def generate_remote(args: argparse.Namespace) -> int:
    """`stream_generation` from parsed flags: args.address, args.prompt and, when present,
    args.max_tokens, args.temperature, args.top_p, args.top_k, args.seed, args.timeout and args.k."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return stream_generation(args.address, args.prompt, get("max_tokens", 64), temperature=get("temperature", 0.0),
                             top_p=get("top_p", 1.0), top_k=get("top_k", 0), seed=get("seed"), k=get("k"),
                             timeout=get("timeout"))
