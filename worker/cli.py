"""CLI of the local engine: `specd generate` and `specd bench decode`."""

from __future__ import annotations

import argparse
import json
import sys
import time

# no torch-importing module at import time: the operator's image (no torch) builds this parser too
from specd.contract import (
    DEFAULT_DEVICE,
    DEFAULT_DRAFT_METHOD,
    DEFAULT_DTYPE,
    DEVICE_KINDS,
    DRAFT_METHODS,
    DRAFTING_METHODS,
    DTYPES,
)


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
    _add_model_args(gen)
    gen.add_argument("--tensor-parallel-size", type=int, default=1,
                     help="shard the target over this many processes with DeepSpeed (default: 1)")
    gen.set_defaults(func=_generate)

    bench = bench_subparsers.add_parser(
        "decode",
        help="speculative vs plain decoding on the local engine",
        description="Greedy decoding of held-out prompts, plain and speculative alternately, at "
                    "several batch sizes; prints speed-up, acceptance and the theoretical bound.",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    bench.add_argument("--k", type=int, default=4, help="speculation length (default: 4)")
    bench.add_argument("--batch-sizes", default="1,4,8", help="comma-separated (default: 1,4,8)")
    bench.add_argument("--prompts", type=int, default=8, help="held-out prompts (default: 8)")
    bench.add_argument("--max-new-tokens", type=int, default=96, help="tokens per prompt (default: 96)")
    bench.add_argument("--rounds", type=int, default=2, help="alternating plain/speculative rounds (default: 2)")
    bench.add_argument("--methods", default=",".join(DRAFTING_METHODS),
                       help=f"comma-separated drafting methods to run next to plain decoding "
                            f"(default: {','.join(DRAFTING_METHODS)})")
    bench.add_argument("--no-peers", action="store_true",
                       help="skip the Hugging Face transformers peers (run by default when transformers is installed)")
    bench.add_argument("--random-model", metavar="SHAPE",
                       help="race on a randomly initialised Llama-shaped pair instead of the demo models: 1b "
                            "(Llama 3.2 1B's shape) or small; the draft is the target's first two layers "
                            "(speed figures only: random weights say nothing of acceptance)")
    _add_model_args(bench)
    bench.set_defaults(func=_bench_decode)


def add_placement_args(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype (worker/device.py resolves them)."""
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help=f"where the models run: {', '.join(DEVICE_KINDS)} or cuda:N (default: auto, a GPU "
                             "when CUDA is available, else the CPU)")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES,
                        help="weights and activations (default: auto, bfloat16 on a GPU, float32 on the CPU)")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-model", help="target model directory (default: the demo target)")
    parser.add_argument("--draft-model", help="draft model directory (default: the demo draft)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    add_placement_args(parser)


def _generate(args: argparse.Namespace) -> int:
    sys.stdout.write(args.prompt)  # the continuation streams right after it
    if args.address:
        from specd.router.cli import generate_remote

        return generate_remote(args)
    import torch

    from specd.demo.paths import resolve_model_dirs
    from specd.errors import SpecdError
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


def _bench_decode(args: argparse.Namespace) -> int:
    import torch

    from specd.demo.corpus import held_out_prompts, read_texts
    from specd.demo.paths import resolve_model_dirs
    from specd.errors import SpecdError
    from specd.worker import bench_decode
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
    settings = bench_decode.DecodeBenchSettings(args.k, batch_sizes, args.prompts, args.max_new_tokens, args.rounds,
                                                methods)
    target_dir, draft_dir = resolve_model_dirs(args.target_model, args.draft_model)
    if args.random_model:
        from specd.demo.paths import cache_dir
        from specd.worker.random_model import write_random_pair

        tokenizer_json = (target_dir / "tokenizer.json").read_text()  # the demo's, for the prompts
        target_dir, draft_dir = write_random_pair(cache_dir() / "random-models", args.random_model, tokenizer_json,
                                                  placement.device, placement.dtype)
    result = bench_decode.run(target_dir, draft_dir, held_out_prompts(args.prompts), settings,
                              log=lambda msg: print(msg, file=sys.stderr), peers=not args.no_peers,
                              held_out_texts=read_texts(held_out=True), placement=placement)
    if args.random_model:
        result["random_model"] = args.random_model
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
