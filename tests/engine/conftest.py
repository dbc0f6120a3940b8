"""Fixtures for engine tests: small random-weight Llama models made in a temporary directory.

The draft is the target plus noise, so it agrees with the target often but not always: tests
exercise full acceptance, partial acceptance and rejection in the same runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from specd.demo.train import train_tokenizer
from specd.worker.checkpoint import save_model
from specd.worker.config import LlamaConfig
from specd.worker.model import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/model_support.py

from model_support import build_early_exit_target  # noqa: E402

TINY = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                   eos_token_id=0, bos_token_id=0)

SAMPLE_TEXT = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
] * 20


@dataclass(frozen=True)
class TinyModels:
    target: Path
    draft: Path


def _make(tmp: Path, noise: float) -> TinyModels:
    torch.manual_seed(0)
    target = LlamaForCausalLM(TINY)
    for name, p in target.named_parameters():
        if p.dim() == 2:  # norms keep weight 1; a large head makes next-token distributions peaked
            torch.nn.init.normal_(p, std=0.6 if name == "lm_head.weight" else 0.3)
    draft = LlamaForCausalLM(TINY)
    draft.load_state_dict({k: v + noise * torch.randn_like(v) for k, v in target.state_dict().items()})
    tokenizer = train_tokenizer(SAMPLE_TEXT, TINY.vocab_size)
    for model, name in ((target, "target"), (draft, "draft")):
        save_model(model, tmp / name)
        tokenizer.save(str(tmp / name / "tokenizer.json"))
    return TinyModels(tmp / "target", tmp / "draft")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return _make(tmp_path_factory.mktemp("tiny-models"), noise=0.01)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def distant_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """A draft that often disagrees with the target: rejections (and their residuals) are common."""
    return _make(tmp_path_factory.mktemp("distant-models"), noise=0.02)


@pytest.fixture(scope="session")
def early_exit_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer random target with two exits and a Kangaroo adapter (tests/model_support.py)."""
    path = tmp_path_factory.mktemp("early-exit-target")
    return build_early_exit_target(path, TINY, train_tokenizer(SAMPLE_TEXT, TINY.vocab_size).to_str(), head_std=0.6)
