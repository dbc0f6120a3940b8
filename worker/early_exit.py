"""The target's own early exits, and the files that describe them.

An early-exit-capable target (the demo target is trained so) can stop after its first layers
and still predict: intermediate states go through the shared final norm and LM head
(`LlamaForCausalLM.logits`). Kangaroo adds a trained *adapter* at its exit: one attention-only
decoder layer (norm, self-attention, residual) plus its own norm before the target's LM head.

`early_exit.json` in the model directory says which layers were trained to exit and where the
adapter sits; methods that need it refuse a target without it, naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from specd.errors import SpecdError
from specd.worker.config import LlamaConfig
from specd.worker.model import LlamaAttention, LlamaForCausalLM, PackedBatch, RMSNorm, Rope

EARLY_EXIT_FILE = "early_exit.json"
ADAPTER_FILE = "kangaroo_adapter.safetensors"
VOCABULARY_KEY = "vocabulary"  # the draft vocabulary, stored with the adapter's weights


class KangarooAdapter(nn.Module):
    """States leaving layer `exit_layer` -> states the target's LM head reads as the next token.

    `vocabulary` (optional): the token ids the self-draft may propose, the most frequent ones in
    training. Its logits then need only those rows of the LM head (a quarter of the head's cost
    for the demo; the draft step is a few layers, so the head is a large share of it). Drafts stay
    exact to verify: greedy checks any token, and sampling accepts against the restricted q."""

    def __init__(self, config: LlamaConfig, exit_layer: int) -> None:
        super().__init__()
        self.exit_layer = exit_layer
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.vocabulary: torch.Tensor | None = None  # [draft vocabulary] int64, ascending
        self._head_rows: torch.Tensor | None = None  # the LM head's rows of that vocabulary

    def forward(self, x: torch.Tensor, batch: PackedBatch, kv_layer: int, rope: Rope) -> torch.Tensor:
        """x: [T, hidden] at the exit; the adapter's keys and values go to cache layer `kv_layer`."""
        return x + self.self_attn(self.input_layernorm(x), batch, kv_layer, rope)

    def logits(self, states: torch.Tensor, model: LlamaForCausalLM) -> torch.Tensor:
        """[n, hidden] adapter outputs -> [n, vocab] float logits (-inf outside the draft vocabulary)."""
        normed = self.norm(states)
        head = model.lm_head.weight
        if self.vocabulary is None or head.shape[0] != model.config.vocab_size:  # none, or a sharded head
            return model.head(normed)
        if self._head_rows is None:
            self._head_rows = head[self.vocabulary]
        out = normed.new_full((len(normed), model.config.vocab_size), float("-inf"), dtype=torch.float32)
        out[:, self.vocabulary] = (normed @ self._head_rows.T).float()
        return out


@dataclass(frozen=True)
class EarlyExits:
    exits: tuple[int, ...]  # layers whose output was trained to go through the shared head
    adapter_exit: int | None  # Kangaroo's ℓ, when an adapter was trained
    hierarchical: tuple[int, int] | None  # HiSpec's (draft exit, intermediate verifier exit)
    specee: dict | None = None  # SpecEE's predictors and schedule (specee.SpecEEConfig reads it)
    confidence: float | None = None  # Kangaroo's η for this model's adapter (None: the paper's default)

    @classmethod
    def read(cls, model_dir: str | Path) -> "EarlyExits":
        path = Path(model_dir) / EARLY_EXIT_FILE
        if not path.is_file():
            raise SpecdError(f"{model_dir} has no {EARLY_EXIT_FILE}: this target was not trained for early "
                             "exits (the demo target is; `specd train-demo` writes one)")
        doc = json.loads(path.read_text())
        hierarchical = doc.get("hierarchical")
        kangaroo = doc.get("kangaroo", {})
        return cls(tuple(doc["exits"]), kangaroo.get("exit_layer"),
                   (hierarchical["draft_exit"], hierarchical["verify_exit"]) if hierarchical else None,
                   doc.get("specee"), kangaroo.get("confidence"))

    def write(self, model_dir: str | Path) -> None:
        doc: dict = {"exits": list(self.exits)}
        if self.adapter_exit is not None:
            doc["kangaroo"] = {"exit_layer": self.adapter_exit, "weights": ADAPTER_FILE}
            if self.confidence is not None:
                doc["kangaroo"]["confidence"] = self.confidence
        if self.hierarchical is not None:
            doc["hierarchical"] = {"draft_exit": self.hierarchical[0], "verify_exit": self.hierarchical[1]}
        if self.specee is not None:
            doc["specee"] = self.specee
        (Path(model_dir) / EARLY_EXIT_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def load_adapter(model_dir: str | Path, config: LlamaConfig, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> KangarooAdapter:
    from safetensors.torch import load_file

    exits = EarlyExits.read(model_dir)
    weights = Path(model_dir) / ADAPTER_FILE
    if exits.adapter_exit is None or not weights.is_file():
        raise SpecdError(f"{model_dir} has no Kangaroo adapter ({ADAPTER_FILE}); train one with `specd train-demo`")
    adapter = KangarooAdapter(config, exits.adapter_exit)
    state = load_file(str(weights))
    vocabulary = state.pop(VOCABULARY_KEY, None)
    adapter.load_state_dict(state)
    adapter = adapter.to(device=device, dtype=dtype).eval().requires_grad_(False)
    adapter.vocabulary = vocabulary.long().to(device) if vocabulary is not None else None
    return adapter


def save_adapter(adapter: KangarooAdapter, model_dir: str | Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    state = {name: t.detach().to(device="cpu", dtype=dtype).contiguous() for name, t in adapter.state_dict().items()}
    if adapter.vocabulary is not None:
        state[VOCABULARY_KEY] = adapter.vocabulary.long().cpu().contiguous()
    save_file(state, str(Path(model_dir) / ADAPTER_FILE), metadata={"format": "pt"})
