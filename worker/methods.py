"""One drafting method by name (the contract's draft methods): the target runner it needs and
the proposer that drafts for it. Everything that runs a method (the local engine, the
benchmark, the target worker) builds it here."""

from __future__ import annotations

from pathlib import Path

from specd import contract
from specd.errors import SpecdError
from specd.worker.early_exit import EarlyExits
from specd.worker.runner import ModelRunner
from specd.worker.self_drafting import EarlyExitProposer, HierarchicalProposer, NgramProposer
from specd.worker.speculation import DraftProposer, Proposer


# the methods that draft, in benchmark order, and the speculation length each runs at by default:
# Kangaroo's γ = 6 (PAPERS.md §3), HiSpec's m = 8 tentative tokens per full validation (§4)
BENCH_METHODS = ("model", "early-exit", "hierarchical", "ngram")
DEFAULT_K = {"model": 4, "early-exit": 6, "hierarchical": 8, "ngram": 4}


def needs_adapter(method: str) -> bool:
    """Whether the target runner must carry the Kangaroo adapter."""
    return method == "early-exit"


def check_method(method: str, target_dir: str | Path) -> None:
    """Refuse a method the target cannot run, naming what is missing, before any model loads."""
    if method not in contract.DRAFT_METHODS:
        raise SpecdError(f"unknown draft method {method!r} (choose from {', '.join(contract.DRAFT_METHODS)})")
    if method == "early-exit" and EarlyExits.read(target_dir).adapter_exit is None:
        raise SpecdError(f"{target_dir}: early-exit drafting needs a Kangaroo adapter (early_exit.json has none)")
    if method == "hierarchical" and EarlyExits.read(target_dir).hierarchical is None:
        raise SpecdError(f"{target_dir}: hierarchical drafting needs two trained exits (early_exit.json has none)")


def make_proposer(method: str, target: ModelRunner, target_dir: str | Path,
                  draft: ModelRunner | None = None) -> Proposer | None:
    """The proposer of `method` over this target runner (None for plain decoding)."""
    check_method(method, target_dir)
    if method == "model":
        if draft is None:
            raise SpecdError("draft method 'model' needs a draft model")
        return DraftProposer(draft)
    if method == "ngram":
        return NgramProposer(target.config.vocab_size)
    if method == "early-exit":
        return EarlyExitProposer(target)
    if method == "hierarchical":
        draft_exit, verify_exit = EarlyExits.read(target_dir).hierarchical
        return HierarchicalProposer(target, draft_exit, verify_exit)
    return None
