"""The `specd` command line: a thin dispatcher.

Each component registers its own sub-commands from a small `cli` module that imports nothing
heavy at module level (torch, grpc and kubernetes are imported inside the handlers), so that
`specd --help` stays fast: `specd worker` and `specd generate` from worker/cli.py, `specd router`,
`up` and `stats` from router/cli.py, `specd bench serve` and `bench decode` from specd/bench/cli.py,
and so on. Flags that several commands take are declared once, in specd/flags.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from specd.errors import SpecdError

# Modules exposing `register(subparsers, bench_subparsers) -> None`.
COMMAND_MODULES = [
    "specd.demo.cli",
    "specd.worker.cli",
    "specd.operator.cli",
    "specd.devcluster.cli",
    "specd.router.cli",
    "specd.bench.cli",
    "specd.sim.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specd",
        description="Serve LLMs with speculative decoding: local engine, serving plane, operator.",
    )
    parser.add_argument("--version", action="version", version=f"specd {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = subparsers.add_parser("bench", help="benchmarks that print JSON figures")
    bench_subparsers = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")

    def bench_usage(_args: argparse.Namespace) -> int:  # `specd bench` without a benchmark
        bench.print_help()
        return 2

    bench.set_defaults(func=bench_usage)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, bench_subparsers)
    return parser


def _version() -> str:
    from specd import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SpecdError as exc:
        print(f"specd: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
