"""The demo models' text: the Python standard library's own sources, present on every machine.

Files are split into training and held-out sets by a hash of their path, so the split is the
same everywhere and benchmarks measure acceptance on text the models never saw.
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

HELD_OUT_ONE_IN = 10  # one file in ten is held out
SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__", "turtledemo"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(held_out: bool) -> list[Path]:
    """Sorted stdlib .py files of one side of the split."""
    root = stdlib_dir()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIPPED_DIRS.intersection(rel.parts[:-1]):
            continue
        is_held_out = zlib.crc32(str(rel).encode()) % HELD_OUT_ONE_IN == 0
        if is_held_out == held_out:
            files.append(path)
    return files


def read_texts(held_out: bool, max_chars: int | None = None) -> list[str]:
    texts, total = [], 0
    for path in source_files(held_out):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return texts


def held_out_prompts(count: int, prompt_chars: int = 160, seed_stride: int = 7) -> list[str]:
    """Deterministic prompts cut from held-out files at line boundaries."""
    prompts = []
    for i, text in enumerate(read_texts(held_out=True)):
        lines = text.splitlines(keepends=True)
        if len(lines) < 40:
            continue
        start = (i * seed_stride) % (len(lines) - 30) + 10
        prompt = ""
        for line in lines[start:]:
            if len(prompt) + len(line) > prompt_chars and prompt:
                break
            prompt += line
        if prompt.strip():
            prompts.append(prompt)
        if len(prompts) == count:
            break
    return prompts
