"""Randomly initialised Llama-shaped models for measuring the engine at real sizes.

Speed depends on shapes, not on what the weights learned, so a random model of Llama 3.2 1B's
shape measures decode speed and memory bandwidth like the trained one would (without its
download). The draft is the target's own first layers with its embedding and head (the
self-speculative draft of LayerSkip-style methods, as a separate model), and the target gets a
random Kangaroo adapter at the same exit, so every drafting method runs; acceptance figures of
random weights say nothing about a trained pair.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from specd.errors import SpecdError
from specd.worker.checkpoint import save_model
from specd.worker.config import LlamaConfig
from specd.worker.early_exit import EarlyExits, KangarooAdapter, save_adapter
from specd.worker.model import LlamaForCausalLM

# Llama 3.2 1B's shape (1.24 B parameters, tied embeddings); "small" keeps its proportions at a
# size a CPU decodes in seconds (the dry run of hack/gpu-check.sh).
SHAPES = {
    "1b": LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                      rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=None),
    "small": LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=None),
}
DRAFT_LAYERS = 2  # the draft is the target's first two layers
HIERARCHICAL = (2, 8)  # HiSpec's draft and intermediate exits


def parameter_count(config: LlamaConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def write_random_pair(root: Path, shape: str, tokenizer_json: str, device: torch.device,
                      dtype: torch.dtype, seed: int = 0) -> tuple[Path, Path]:
    """Write (target, draft) model directories under root/shape (reused when already there)."""
    if shape not in SHAPES:
        raise SpecdError(f"--random-model must be one of {', '.join(SHAPES)}, got {shape!r}")
    config = SHAPES[shape]
    target_dir, draft_dir = root / shape / "target", root / shape / "draft"
    if (draft_dir / "config.json").is_file():
        return target_dir, draft_dir
    torch.manual_seed(seed)
    with torch.device(device):
        target = LlamaForCausalLM(config).to(dtype)
        for name, p in target.named_parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)  # Hugging Face's Llama initialisation
        adapter = KangarooAdapter(config, exit_layer=DRAFT_LAYERS).to(dtype)
    save_model(target, target_dir, dtype)
    draft_config = replace(config, num_hidden_layers=DRAFT_LAYERS)
    draft_state = {name: t for name, t in target.state_dict().items()
                   if not name.startswith("model.layers.") or int(name.split(".")[2]) < DRAFT_LAYERS}
    with torch.device("meta"):
        draft = LlamaForCausalLM(draft_config)
    draft.load_state_dict(draft_state, assign=True)
    save_model(draft, draft_dir, dtype)
    save_adapter(adapter, target_dir, dtype)
    exits = sorted({DRAFT_LAYERS, *HIERARCHICAL})
    # η = 0: a random draft is never confident, and the point is to time the drafting machinery
    EarlyExits(exits=tuple(exits), adapter_exit=DRAFT_LAYERS, hierarchical=HIERARCHICAL,
               confidence=0.0).write(target_dir)
    for path in (target_dir, draft_dir):
        (path / "tokenizer.json").write_text(tokenizer_json)
        (path / "random.json").write_text(json.dumps({"shape": shape, "seed": seed}) + "\n")
    return target_dir, draft_dir
