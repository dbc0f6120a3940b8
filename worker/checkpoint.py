"""Hugging Face-format checkpoints (config.json + safetensors) in a local directory: load and save.

Weights are read through a memory map of each safetensors file: a tensor is a view of the file's
pages, read when first used, so loading costs no host memory of its own, and the processes of a
tensor-parallel pod (each slicing its shard out of the same weights) share one copy of the pages
instead of holding one copy each (8 x 140 GB for a 70B model over 8 GPUs).
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch

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


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def map_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of a private (copy-on-write) memory map."""
    with open(file, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    (header_size,) = struct.unpack("<Q", mapped[:8])
    header = json.loads(mapped[8 : 8 + header_size])
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise SpecdError(f"{file}: tensor {name!r} has dtype {info['dtype']}, which specd does not read")
        start, end = info["data_offsets"]
        if start == end:
            tensors[name] = torch.empty(info["shape"], dtype=dtype, device="cpu")
            continue
        flat = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // dtype.itemsize,
                                offset=8 + header_size + start)
        tensors[name] = flat.view(info["shape"])
    return tensors


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> LlamaForCausalLM:
    """Build the model from config.json and load every weight onto `device` in `dtype`, tensor by
    tensor (on the CPU in the checkpoint's dtype the weights stay views of the file's pages);
    missing or extra tensors are an error."""
    path = check_model_dir(model_dir)
    config = LlamaConfig.from_file(path / "config.json")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        state.update({name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                      for name, t in map_safetensors(file).items()})
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise SpecdError(f"{path}: checkpoint does not match config.json "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # The rotary tables are buffers computed from the config, not checkpoint tensors.
    with torch.device(device):
        model.model.rotary = type(model.model.rotary)(config.head_dim, config.max_position_embeddings,
                                                      config.rope_theta)
    return model.to(dtype).eval().requires_grad_(False)  # the rotary tables; the weights already are


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
