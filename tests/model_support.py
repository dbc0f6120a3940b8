"""A random early-exit-capable target for tests: trained exits are not needed to test exactness.

Small residual branches keep the early layers' predictions close to the last layer's, so drafts
from the exits are accepted often but not always; `head_std` sets how peaked the distributions
are; its early_exit.json sets Kangaroo's confidence threshold η to 0.25."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from specd.worker.checkpoint import save_model
from specd.worker.config import LlamaConfig
from specd.worker.device import resolve_placement
from specd.worker.early_exit import EarlyExits, KangarooAdapter, save_adapter
from specd.worker.model import LlamaForCausalLM
from specd.worker.specee import ExitPredictor, SpecEEConfig, save_predictors

# Where the engine's correctness tests run: the CPU, or SPECD_TEST_DEVICE (hack/gpu-check.sh sets
# cuda). float32 everywhere: the tests compare speculative with plain decoding token for token.
TEST_PLACEMENT = resolve_placement(os.environ.get("SPECD_TEST_DEVICE", "cpu"), "float32")


def build_early_exit_target(path: Path, config: LlamaConfig, tokenizer_json: str, head_std: float,
                            seed: int = 1) -> Path:
    """A 4-layer target with exits at layers 1 and 2, a random Kangaroo adapter at 1 and random
    SpecEE predictors at depths 2 and 3 (τ 0.5; tests change it)."""
    torch.manual_seed(seed)
    config = replace(config, num_hidden_layers=4)
    target = LlamaForCausalLM(config)
    for name, p in target.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=head_std if name == "lm_head.weight" else 0.3 if "embed" in name else 0.03)
    save_model(target, path)
    (path / "tokenizer.json").write_text(tokenizer_json)
    adapter = KangarooAdapter(config, exit_layer=1)
    for p in adapter.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.03)
    save_adapter(adapter, path, torch.float32)
    save_predictors({2: ExitPredictor(4), 3: ExitPredictor(4)}, path, torch.float32)
    specee = SpecEEConfig(candidates=4, layers=(2, 3), offline=(2,)).as_json()
    # an η the random exits pass sometimes (the paper's 0.6 would stop almost every draft)
    EarlyExits(exits=(1, 2), adapter_exit=1, hierarchical=(1, 2), specee=specee, confidence=0.25).write(path)
    return path
