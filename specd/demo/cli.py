"""CLI of the demo models: `specd train-demo` and `specd demo`."""

from __future__ import annotations

import argparse

from specd import contract


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-demo",
        help="train the tiny demo target and draft models from the standard library's sources",
        description="Train the demo target (~8M parameters, early-exit capable, with a Kangaroo adapter "
                    "and SpecEE predictors) and draft (~1.4M, distilled from the target) with fixed seeds, "
                    "writing HF-format directories OUT/target and OUT/draft.",
    )
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--steps", type=int, help="joint training steps (default: the committed models' setting)")
    train.add_argument("--distill-steps", type=int, help="draft-only distillation steps at the end")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: 1)")
    train.add_argument("--phases", help="comma-separated phases to run, each from the files the previous one "
                                        "wrote in OUT (default: all: joint,early-exit,on-policy,adapter,specee)")
    train.set_defaults(func=_train)

    demo = subparsers.add_parser(
        "demo",
        help="start the local stack on the demo models and stream one generation through it",
        description="The quick start's main job: start a target worker, a draft worker and a router "
                    f"({contract.DEFAULT_POLICY} scheduling, {contract.DEFAULT_SPECULATION_MODE} speculation) "
                    "as processes on loopback, stream a generation back through the client SDK, then stop "
                    "them all.",
    )
    demo.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue (default: a Python snippet)")
    demo.add_argument("--max-tokens", type=int, default=96, help="tokens to generate (default: 96)")
    demo.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    demo.add_argument("--seed", type=int, default=None, help="sampling seed")
    demo.set_defaults(func=_demo)


DEFAULT_PROMPT = "class Stack:\n    def __init__(self):"


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from specd.demo.train import PHASES, TrainSettings, train

    overrides = {name: value for name, value in
                 (("steps", args.steps), ("distill_steps", args.distill_steps), ("threads", args.threads))
                 if value is not None}
    phases = tuple(args.phases.split(",")) if args.phases else PHASES
    train(Path(args.out), replace(TrainSettings(), **overrides), log=lambda msg: print(msg, flush=True),
          phases=phases)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from specd.demo.paths import demo_model_dirs
    from specd.router.cli import stream_generation
    from specd.router.local import LocalStack, RouterSettings

    target_dir, draft_dir = demo_model_dirs()
    log_dir = Path.home() / ".specd" / "demo-logs"
    policy, speculation = contract.DEFAULT_POLICY, contract.DEFAULT_SPECULATION_MODE
    print(f"starting the local stack: target worker, draft worker, router ({policy}, {speculation}); "
          f"logs in {log_dir}", file=sys.stderr)
    stack = LocalStack()
    try:
        (router,) = stack.launch(
            target_dir, draft_dir, [RouterSettings(policy, speculation, contract.MAX_BATCH_SIZE.default)],
            log_dir=log_dir,
            on_worker_serving=lambda w: print(f"  {w.name} worker serving on {w.address}", file=sys.stderr))
        print(f"  router serving on {router.address}; streaming a generation:\n", file=sys.stderr)
        sys.stdout.write(args.prompt)
        return stream_generation(router.address, args.prompt, args.max_tokens, temperature=args.temperature,
                                 seed=args.seed)
    finally:
        stack.stop()
