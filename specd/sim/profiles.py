"""Step-time models of the simulated workers.

One forward pass costs `base + per_token * tokens fed + per_context * context tokens read`
(SmartSpec's cost model: linear in batched tokens and in context), and every call adds a round
trip `rpc_s` (a Propose `draft_rpc_s` where it was measured apart). A profile is either named
(below, coefficients derived from data sheets, each with its source) or calibrated on this
machine's workers (`specd bench calibrate` writes it as JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from specd.errors import SpecdError


@dataclass(frozen=True)
class PassCost:
    """Seconds of one forward pass of a batch."""

    base: float  # weights streamed from memory once per pass, kernel launches, collectives
    per_token: float  # compute per token fed (new tokens of every request in the batch)
    per_context: float  # KV cache read per token of context (summed over the batch)

    def __call__(self, tokens: float, context: float) -> float:
        return self.base + self.per_token * tokens + self.per_context * context


@dataclass(frozen=True)
class Profile:
    name: str
    target: PassCost
    draft: PassCost
    rpc_s: float  # round trip of one call beyond the worker's compute
    source: str
    # the target's Prefill (prompt tokens, logits of the last only), where it was measured apart from
    # decoding; None: the target's pass cost (GPUs: both are weight-streaming plus per-token compute)
    prefill: PassCost | None = None
    draft_rpc_s: float | None = None  # a Propose's round trip where measured apart (None: rpc_s)

    def prefill_seconds(self, tokens: int) -> float:
        return (self.prefill or self.target)(tokens, 0)

    def round_trip(self, role: str) -> float:
        return self.draft_rpc_s if role == "draft" and self.draft_rpc_s is not None else self.rpc_s

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, raw: dict) -> "Profile":
        return cls(name=raw["name"], target=PassCost(**raw["target"]), draft=PassCost(**raw["draft"]),
                   rpc_s=raw["rpc_s"], source=raw.get("source", ""),
                   prefill=PassCost(**raw["prefill"]) if raw.get("prefill") else None,
                   draft_rpc_s=raw.get("draft_rpc_s"))


def _hbm(bytes_: float, bandwidth: float, efficiency: float = 0.7) -> float:
    """Seconds to stream `bytes_` at `efficiency` of a data-sheet bandwidth."""
    return bytes_ / (bandwidth * efficiency)


def _flops(flop: float, peak: float, mfu: float = 0.5) -> float:
    return flop / (peak * mfu)


H100_HBM, H100_BF16 = 3.35e12, 989e12  # H100 SXM data sheet: HBM3 bytes/s, dense BF16 FLOP/s
A100_HBM, A100_BF16 = 2.039e12, 312e12  # A100 80GB SXM data sheet

NAMED: dict[str, Profile] = {
    "h100-70b-tp8": Profile(
        name="h100-70b-tp8",
        # Llama-3-70B in BF16 over 8 H100s: 141 GB of weights / 8 per pass, 160 all-reduces of ~15 us;
        # 2 * 70.6e9 FLOP per token; 80 layers * 8 KV heads * 128 * 2 (K, V) * 2 B = 320 KiB of KV per token
        target=PassCost(base=_hbm(141e9 / 8, H100_HBM) + 160 * 15e-6,
                        per_token=_flops(2 * 70.6e9, 8 * H100_BF16),
                        per_context=_hbm(80 * 8 * 128 * 2 * 2 / 8, H100_HBM)),
        # Llama-3.2-1B on one H100: 2.47 GB of weights, launch-bound (16 layers, no CUDA graphs: +0.4 ms)
        draft=PassCost(base=_hbm(2.47e9, H100_HBM) + 0.4e-3, per_token=_flops(2 * 1.24e9, H100_BF16),
                       per_context=_hbm(16 * 8 * 64 * 2 * 2, H100_HBM)),
        rpc_s=0.3e-3,
        source="H100 SXM data sheet (3.35 TB/s HBM3 at 70% achieved, 989 TFLOP/s BF16 at 50% MFU); "
               "Llama-3-70B / Llama-3.2-1B shapes from their model cards; in-cluster gRPC round trip 0.3 ms"),
    "a100-7b": Profile(
        name="a100-7b",
        # Llama-2-7B (multi-head attention: 32 layers * 32 heads * 128 * 2 * 2 B = 512 KiB of KV per token)
        # with a 68M-parameter draft, as in SmartSpec's and SpecInfer's single-GPU evaluations
        target=PassCost(base=_hbm(13.5e9, A100_HBM), per_token=_flops(2 * 6.7e9, A100_BF16),
                        per_context=_hbm(32 * 32 * 128 * 2 * 2, A100_HBM)),
        draft=PassCost(base=_hbm(0.136e9, A100_HBM) + 0.5e-3, per_token=_flops(2 * 68e6, A100_BF16),
                       per_context=_hbm(2 * 768 * 2 * 2, A100_HBM)),
        rpc_s=0.3e-3,
        source="A100 80GB SXM data sheet (2.04 TB/s at 70%, 312 TFLOP/s BF16 at 50% MFU); Llama-2-7B and "
               "a 68M draft (LLaMA-68M); in-cluster gRPC round trip 0.3 ms"),
}


def load_profile(name_or_path: str) -> Profile:
    """A named profile, or a calibrated one from a JSON file."""
    if name_or_path in NAMED:
        return NAMED[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise SpecdError(f"profile {name_or_path!r}: neither a named profile ({', '.join(NAMED)}) nor a file")
    try:
        return Profile.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecdError(f"profile {path}: not a profile file ({exc})") from None
