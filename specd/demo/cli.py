"""CLI of the demo models: `specd train-demo` and `specd demo`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-demo",
        help="train the tiny demo target and draft models from the standard library's sources",
        description="Train the demo target (~8M parameters) and draft (~1.4M, distilled from the "
                    "target) with fixed seeds, writing HF-format directories OUT/target and OUT/draft.",
    )
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--steps", type=int, help="joint training steps (default: the committed models' setting)")
    train.add_argument("--distill-steps", type=int, help="draft-only distillation steps at the end")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: 1)")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from specd.demo.train import TrainSettings, train

    overrides = {name: value for name, value in
                 (("steps", args.steps), ("distill_steps", args.distill_steps), ("threads", args.threads))
                 if value is not None}
    train(Path(args.out), replace(TrainSettings(), **overrides), log=lambda msg: print(msg, flush=True))
    return 0
