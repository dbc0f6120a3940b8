"""Hugging Face-format checkpoints (config.json + safetensors) in a local directory: load and save."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from specd.errors import SpecdError
from specd.worker.config import LlamaConfig
from specd.worker.model import LlamaForCausalLM


def check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise SpecdError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise SpecdError(f"{path} is not a model directory: config.json is missing")
    return path


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in shards]
    raise SpecdError(f"{path} has no model.safetensors (or model.safetensors.index.json)")


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> LlamaForCausalLM:
    """Build the model from config.json and load every weight straight onto `device` (no full copy
    in host memory first); missing or extra tensors are an error."""
    path = check_model_dir(model_dir)
    config = LlamaConfig.from_file(path / "config.json")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        state.update(load_file(str(file), device=str(device)))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model = model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise SpecdError(f"{path}: checkpoint does not match config.json (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # The rotary tables are buffers computed from the config, not checkpoint tensors.
    with torch.device(device):
        model.model.rotary = type(model.model.rotary)(config.head_dim, config.max_position_embeddings, config.rope_theta)
    return model.to(dtype).eval().requires_grad_(False)


def save_model(model: LlamaForCausalLM, model_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json and model.safetensors in the layout `load_model` (and transformers) read."""
    from safetensors.torch import save_file

    path = Path(model_dir)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict()
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {name: t.detach().to(device="cpu", dtype=dtype).contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
