"""The worker's commands: `specd worker` (a gRPC draft or target worker) and `specd generate` (the
engine in this process, or a running router with --address). The decode benchmark's command is in
specd/bench/cli.py."""

from __future__ import annotations

import argparse
import sys
import time

# no torch-importing module at import time: the operator's image (no torch) builds this parser too
from specd import contract
from specd.contract import DEFAULT_DRAFT_METHOD, DRAFT_METHODS
from specd.errors import SpecdError
from specd.flags import add_metrics_port_flag, add_model_flags, add_placement_flags, add_threads_flag, log_to_stderr


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser(
        "generate",
        help="stream a generation (in-process engine, or a running service with --address)",
        description="Stream a generation. Without --address the target and draft models run in this "
                    "process (the demo models by default); with --address the request goes to a "
                    "running specd router through the client SDK.",
    )
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max-tokens", type=int, default=96, help="tokens to generate (default: 96)")
    gen.add_argument("--k", type=int, default=4, help="speculation length per step, 0 = plain decoding (default: 4)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    gen.add_argument("--seed", type=int, default=None, help="sampling seed for reproducible output")
    gen.add_argument("--address", help="HOST:PORT of a specd router; omit to run the engine in-process")
    gen.add_argument("--draft-method", choices=DRAFT_METHODS, default=DEFAULT_DRAFT_METHOD,
                     help="in-process only: model (the draft model), early-exit (Kangaroo), hierarchical "
                          "(HiSpec), ngram (prompt lookup), specee (APPROXIMATE early exits; use --k 0) or none "
                          f"(default: {DEFAULT_DRAFT_METHOD})")
    add_model_flags(gen, placement=True)
    gen.add_argument("--tensor-parallel-size", type=int, default=1,
                     help="shard the target over this many processes with DeepSpeed (default: 1)")
    gen.set_defaults(func=_generate)

    _register_worker(subparsers)


def _register_worker(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("worker", help="run a draft or target worker (gRPC)",
                              description="Serve one model as a draft or target worker over gRPC "
                                          "(specd.v1.DraftWorker / specd.v1.TargetWorker, with health and reflection).")
    p.add_argument("--role", choices=("target", "draft"), required=True)
    p.add_argument("--model", required=True, help="model directory (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0)")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="target only: processes the model is sharded over")
    p.add_argument("--draft-method", choices=DRAFT_METHODS, default=DEFAULT_DRAFT_METHOD,
                   help="how drafts are made: model (a separate draft worker proposes them); early-exit "
                        "(Kangaroo), hierarchical (HiSpec) or ngram (prompt lookup), drafted inside the target "
                        "worker; specee (SpecEE early exits inside the target: APPROXIMATE, greedy outputs may "
                        "differ from the target's); none (plain decoding) "
                        f"(default: {DEFAULT_DRAFT_METHOD})")
    add_threads_flag(p)
    p.add_argument("--kv-budget-mib", type=float, default=512, help="KV cache memory budget (default: 512)")
    add_placement_flags(p)
    add_metrics_port_flag(p)
    p.add_argument("--grace", type=float, default=30, help="seconds to finish running calls after SIGTERM")
    p.set_defaults(func=_worker)


def _worker(args: argparse.Namespace) -> int:
    if args.role == "draft" and args.draft_method not in contract.DRAFT_POOL_METHODS:
        raise SpecdError(f"a draft worker makes drafts with a model: --draft-method {args.draft_method} "
                         "is for target workers")
    if args.threads < 1:
        raise SpecdError("--threads must be at least 1")
    import asyncio

    import torch

    from specd.worker.servers.service import load_core, serve_worker

    torch.set_num_threads(args.threads)
    log_to_stderr()
    core = load_core(args.role, args.model, args.tensor_parallel_size, args.kv_budget_mib, args.draft_method,
                     args.device, args.dtype)
    asyncio.run(serve_worker(core, args.host, args.port, args.grace, args.metrics_port))
    return 0


def _generate(args: argparse.Namespace) -> int:
    sys.stdout.write(args.prompt)  # the continuation streams right after it
    if args.address:
        from specd.router.cli import stream_generation

        return stream_generation(args.address, args.prompt, args.max_tokens, temperature=args.temperature,
                                 top_p=args.top_p, top_k=args.top_k, seed=args.seed, k=args.k)
    import torch

    from specd.demo.paths import resolve_model_dirs
    from specd.worker.device import resolve_placement
    from specd.worker.engine import GenerationRequest, SpeculativeEngine
    from specd.worker.methods import make_exit_decoder, make_proposer, needs_adapter
    from specd.worker.runner import ModelRunner
    from specd.worker.sampling import SamplingParams
    from specd.worker.tensor_parallel import load_runner
    from specd.worker.tokenizer import StreamDecoder, Tokenizer

    torch.set_num_threads(args.threads)
    placement = resolve_placement(args.device, args.dtype)
    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    tokenizer = Tokenizer(target_dir)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise SpecdError("prompt is empty")
    method = args.draft_method
    target = load_runner(target_dir, args.tensor_parallel_size, with_adapter=needs_adapter(method), placement=placement)
    try:
        draft = ModelRunner.from_dir(draft_dir, placement=placement) if method == "model" and args.k > 0 else None
        proposer = make_proposer(method, target, target_dir, draft) if method != "model" or draft else None
        engine = SpeculativeEngine(target, proposer=proposer,
                                   exit_decoder=make_exit_decoder(method, target, target_dir))
        params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
        request = GenerationRequest(prompt, args.max_tokens, params, args.k)
        decoder = StreamDecoder(tokenizer)
        started = time.perf_counter()
        generated = 0
        for out in engine.run([request]):
            generated += len(out.new_tokens)
            sys.stdout.write(decoder.push(out.new_tokens))
            sys.stdout.flush()
            stats = out.stats
        elapsed = time.perf_counter() - started
        sys.stdout.write("\n")
        print(f"[{generated} tokens in {elapsed:.2f}s, {generated / elapsed:.1f} tokens/s, {method}, k={args.k}, "
              f"acceptance {stats.acceptance_rate:.2f}, {stats.steps} target steps]", file=sys.stderr)
    finally:
        target.close()
    return 0
