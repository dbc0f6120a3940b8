"""Model configuration read from a Hugging Face `config.json` (Llama architecture)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from specd.errors import SpecdError

SUPPORTED_MODEL_TYPES = ("llama",)


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_file(cls, path: Path) -> "LlamaConfig":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpecdError(f"model config not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise SpecdError(f"model config {path} is not valid JSON: {exc}") from None
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SpecdError(
                f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if raw.get("rope_scaling"):
            raise SpecdError(f"{path}: rope_scaling is not supported yet")
        eos = raw.get("eos_token_id")
        if isinstance(eos, list):  # HF allows several; the first is the canonical one
            eos = eos[0] if eos else None
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
            max_position_embeddings=raw["max_position_embeddings"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
            rope_theta=raw.get("rope_theta", 10000.0),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=eos,
        )

    def to_hf_dict(self) -> dict:
        """The config.json contents that transformers' LlamaForCausalLM also reads."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float32",
            **asdict(self),
        }
