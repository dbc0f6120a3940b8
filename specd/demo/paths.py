"""Where the demo models live and how `specd` finds them by default."""

from __future__ import annotations

import os
from pathlib import Path

from specd.errors import SpecdError

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def demo_model_dirs() -> tuple[Path, Path]:
    """(target, draft) directories: $SPECD_DEMO_MODELS/{target,draft} or the committed checkpoints."""
    root = Path(os.environ.get("SPECD_DEMO_MODELS", CHECKPOINTS))
    target, draft = root / "target", root / "draft"
    for path in (target, draft):
        if not (path / "config.json").is_file():
            raise SpecdError(f"demo model not found at {path}; train it with `specd train-demo --out {root}`")
    return target, draft


def resolve_model_dirs(target: str | Path | None, draft: str | Path | None) -> tuple[Path, Path]:
    """The directories given on the command line, the demo models for whichever was not given."""
    if target and draft:
        return Path(target), Path(draft)
    demo_target, demo_draft = demo_model_dirs()
    return Path(target or demo_target), Path(draft or demo_draft)


def cache_dir() -> Path:
    """specd's cache ($SPECD_CACHE, else ~/.cache/specd), as the build scripts under hack/ use it."""
    return Path(os.environ.get("SPECD_CACHE") or Path.home() / ".cache" / "specd")
