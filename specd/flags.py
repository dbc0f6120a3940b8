"""Flags that several commands take, declared once, and the parsers of flag values.

Command modules (`worker/cli.py`, `router/cli.py`, `specd/bench/cli.py`, ...) add these to their
parsers and turn the parsed values into typed arguments in their handlers. Nothing heavy is
imported here: the operator's image (no torch) builds every parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from specd import contract
from specd.contract import DEFAULT_DEVICE, DEFAULT_DTYPE, DEVICE_KINDS, DTYPES, POLICIES
from specd.errors import SpecdError
from specd.sim.workloads import LogNormal


def add_model_flags(parser: argparse.ArgumentParser, *, threads: bool = True, placement: bool = False) -> None:
    """--target-model/--draft-model (default: the demo pair, see specd.demo.paths.resolve_model_dirs),
    --threads unless `threads` is false, and --device/--dtype when `placement` is true."""
    parser.add_argument("--target-model", help="target model directory (default: the demo target)")
    parser.add_argument("--draft-model", help="draft model directory (default: the demo draft)")
    if threads:
        add_threads_flag(parser)
    if placement:
        add_placement_flags(parser)


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per process (default: 1; more threads thrash on a shared CPU)")


def add_placement_flags(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype (worker/device.py resolves them)."""
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help=f"where the models run: {', '.join(DEVICE_KINDS)} or cuda:N (default: auto, a GPU "
                             "when CUDA is available, else the CPU)")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES,
                        help="weights and activations (default: auto, bfloat16 on a GPU, float32 on the CPU)")


def add_metrics_port_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics on this port (0: any free port; default: none; "
                             f"the operator's pods use {contract.METRICS_PORT.default})")


# -- values --------------------------------------------------------------------------------------

def speculation(value: str) -> str:
    """A speculation mode as the command line writes it, canonical: `off` becomes `none`."""
    try:
        mode, k = contract.parse_speculation(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return contract.speculation_label(mode, k)


def bounded(flag: str, bounds: contract.Range[int]) -> Callable[[str], int]:
    """An argparse `type`: an integer within the contract's bounds."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected an integer, got {text!r}") from None
        if value not in bounds:
            raise argparse.ArgumentTypeError(f"{flag} must be in {bounds.describe()}, got {value}")
        return value
    return parse


def policies(flag: str, text: str) -> list[str]:
    """Comma-separated policies."""
    named = text.split(",")
    unknown = [p for p in named if p not in POLICIES]
    if unknown:
        raise SpecdError(f"{flag}: {', '.join(unknown)} not among {', '.join(POLICIES)}")
    return named


def speculations(flag: str, text: str) -> list[str]:
    """Comma-separated speculation modes, canonical."""
    try:
        return [speculation(value) for value in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise SpecdError(f"{flag}: {exc}") from None


def output_tokens(flag: str, text: str) -> LogNormal:
    """MEDIAN,SIGMA,MAX of log-normal output lengths (at least 1 token)."""
    parts = text.split(",")
    try:
        median, sigma, high = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        raise SpecdError(f"{flag}: expected MEDIAN,SIGMA,MAX, got {text!r}") from None
    if len(parts) != 3 or not (median >= 1 and sigma >= 0 and high >= median):
        raise SpecdError(f"{flag}: expected MEDIAN >= 1, SIGMA >= 0 and MAX >= MEDIAN, got {text!r}")
    return LogNormal(median, sigma, low=1, high=high)


def positive_floats(flag: str, text: str) -> list[float]:
    """Comma-separated positive numbers."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise SpecdError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise SpecdError(f"{flag}: every value must be positive, got {text!r}")
    return values


def log_to_stderr() -> None:
    """The servers' logging (`specd worker`, `specd router`): INFO and up, timestamped, on stderr."""
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
