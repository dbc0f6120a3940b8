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
