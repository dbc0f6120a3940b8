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
from specd.worker.specee import SpecEEConfig, SpecEEDecoder
from specd.worker.speculation import DraftProposer, Proposer

# the speculation length each method runs at by default: Kangaroo's γ = 6 (PAPERS.md §3), HiSpec's
# m = 8 tentative tokens per full validation (§4); SpecEE drafts nothing
DEFAULT_K = {"model": 4, "early-exit": 6, "hierarchical": 8, "ngram": 4, "specee": 0}


def needs_adapter(method: str) -> bool:
    """Whether the target runner must carry the Kangaroo adapter."""
    return method in ("early-exit", "specee")  # SpecEE's candidates come from the Kangaroo self-draft


def check_method(method: str, target_dir: str | Path) -> None:
    """Refuse a method the target cannot run, naming what is missing, before any model loads."""
    if method not in contract.DRAFT_METHODS:
        raise SpecdError(f"unknown draft method {method!r} (choose from {', '.join(contract.DRAFT_METHODS)})")
    if method == "early-exit" and EarlyExits.read(target_dir).adapter_exit is None:
        raise SpecdError(f"{target_dir}: early-exit drafting needs a Kangaroo adapter (early_exit.json has none)")
    if method == "hierarchical" and EarlyExits.read(target_dir).hierarchical is None:
        raise SpecdError(f"{target_dir}: hierarchical drafting needs two trained exits (early_exit.json has none)")
    if method == "specee":
        if EarlyExits.read(target_dir).adapter_exit is None:
            raise SpecdError(f"{target_dir}: specee takes candidates from a Kangaroo adapter "
                             "(early_exit.json has none)")
        SpecEEConfig.read(target_dir)


def make_proposer(method: str, target: ModelRunner, target_dir: str | Path,
                  draft: ModelRunner | None = None) -> Proposer | None:
    """The proposer of `method` over this target runner (None for plain decoding and specee,
    which drafts nothing: see `make_exit_decoder`)."""
    check_method(method, target_dir)
    if method == "model":
        if draft is None:
            raise SpecdError("draft method 'model' needs a draft model")
        return DraftProposer(draft)
    if method == "ngram":
        return NgramProposer(target.config.vocab_size, target.device)
    if method == "early-exit":
        confidence = EarlyExits.read(target_dir).confidence
        return EarlyExitProposer(target) if confidence is None else EarlyExitProposer(target, confidence)
    if method == "hierarchical":
        exits = EarlyExits.read(target_dir).hierarchical
        assert exits is not None  # check_method refused a target without them
        draft_exit, verify_exit = exits
        return HierarchicalProposer(target, draft_exit, verify_exit)
    return None


def make_exit_decoder(method: str, target: ModelRunner, target_dir: str | Path) -> SpecEEDecoder | None:
    """SpecEE's decoder for `specee` (approximate), None for every other method."""
    if method != "specee":
        return None
    check_method(method, target_dir)
    return SpecEEDecoder.from_dir(target, target_dir)
