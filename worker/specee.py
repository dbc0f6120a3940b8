"""SpecEE (PAPERS.md §5): speculative early exiting. APPROXIMATE: a token may differ from the
target's own; it is never enabled silently (only `draft.method: specee`, whose help says so).

Each decoding step, per request:
1. candidates: the k likeliest tokens of the Kangaroo self-draft (the target's first ℓ layers,
   the adapter and the LM head), so the exit checks need only k rows of the LM head;
2. the target's layers run on; at each *scheduled* layer a tiny predictor (an MLP over the k
   candidates' logits at that layer, their probabilities among the k, and the change of those
   probabilities since the last checked layer; 3k -> 512 -> 1, sigmoid) says whether the token is
   settled; above τ the token exits as the likeliest candidate at that layer;
3. a token that never exits goes through the whole model (then it is exact).

Scheduling is two-level: an offline set of layers where exits concentrate in training, plus the
neighbours (x-3, x-1, x+1) of the layers where the request's last few tokens exited.

An exited token is not finished by copying states into the skipped layers: it stays in the
cache at its exit depth (kv_cache.py) and its remaining layers run in the next step's pass,
packed with the next token's rows, so every later token attends to exact keys and values.
The saving is the critical path: the skipped layers of one token ride along with the next.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from specd.errors import SpecdError
from specd.worker.early_exit import EARLY_EXIT_FILE
from specd.worker.runner import ForwardItem, ModelRunner

PREDICTORS_FILE = "specee_predictors.safetensors"
DEFAULT_THRESHOLD = 0.5  # τ
RECENT_EXITS = 3  # exits of a request whose neighbours join its schedule
NEIGHBOURS = (-3, -1, 1)


class ExitPredictor(nn.Module):
    """[n, 3k] features -> [n] probability that the layer's likeliest candidate is the final token."""

    def __init__(self, candidates: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * candidates, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(features)).squeeze(-1)


def candidate_features(logits: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [n, k] of the candidates at this layer; previous: [n, k] their probabilities at the
    last checked layer -> ([n, 3k] features, [n, k] probabilities now)."""
    probs = logits.softmax(-1)
    return torch.cat([logits, probs, probs - previous], dim=-1), probs


def candidate_logits(runner: ModelRunner, states: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """states: [n, hidden] leaving some layer; candidates: [n, k] token ids -> [n, k] logits through
    the shared final norm and only the candidates' rows of the LM head."""
    normed = runner.model.model.norm(states)
    rows = runner.model.lm_head.weight[candidates]  # [n, k, hidden]
    return torch.einsum("nh,nkh->nk", normed, rows).float()


@dataclass(frozen=True)
class SpecEEConfig:
    candidates: int  # k
    layers: tuple[int, ...]  # depths with a predictor (states leaving layer depth - 1)
    offline: tuple[int, ...]  # depths checked for every token
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def read(cls, model_dir: str | Path) -> "SpecEEConfig":
        doc = json.loads((Path(model_dir) / EARLY_EXIT_FILE).read_text()).get("specee")
        if not doc:
            raise SpecdError(f"{model_dir}: specee needs trained exit predictors ({EARLY_EXIT_FILE} has no "
                             "'specee' entry; `specd train-demo` trains them)")
        return cls(doc["candidates"], tuple(doc["layers"]), tuple(doc["offline"]),
                   doc.get("threshold", DEFAULT_THRESHOLD))

    def as_json(self) -> dict:
        return {"candidates": self.candidates, "layers": list(self.layers), "offline": list(self.offline),
                "threshold": self.threshold, "weights": PREDICTORS_FILE}


def load_predictors(model_dir: str | Path, config: SpecEEConfig,
                    device: torch.device | str = "cpu") -> dict[int, ExitPredictor]:
    from safetensors.torch import load_file

    state = load_file(str(Path(model_dir) / PREDICTORS_FILE))
    predictors = {}
    for depth in config.layers:
        predictor = ExitPredictor(config.candidates)
        predictor.load_state_dict({name.removeprefix(f"{depth}."): t.float() for name, t in state.items()
                                   if name.startswith(f"{depth}.")})
        predictors[depth] = predictor.to(device).eval().requires_grad_(False)
    return predictors


def save_predictors(predictors: dict[int, ExitPredictor], model_dir: str | Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    state = {f"{depth}.{name}": t.detach().to(dtype).contiguous()
             for depth, p in predictors.items() for name, t in p.state_dict().items()}
    save_file(state, str(Path(model_dir) / PREDICTORS_FILE), metadata={"format": "pt"})


@dataclass
class _Token:
    request_id: str
    committed: list[int]
    candidates: torch.Tensor  # [k]
    probs: torch.Tensor  # [k] at the last checked layer
    schedule: list[int]
    token: int | None = None
    exit_depth: int = 0


class SpecEEDecoder:
    """One greedy token per request per step, exiting early where the predictors allow."""

    def __init__(self, runner: ModelRunner, config: SpecEEConfig, predictors: dict[int, ExitPredictor]) -> None:
        if runner.adapter is None:
            raise ValueError("SpecEE takes its candidates from the Kangaroo self-draft: the runner needs the adapter")
        self.runner = runner
        self.adapter = runner.adapter
        self.config = config
        self.predictors = predictors
        self.recent: dict[str, deque[int]] = {}  # request -> depths of its last exits
        self.exits: dict[int, int] = {}  # depth -> tokens that exited there (full depth included)

    @classmethod
    def from_dir(cls, runner: ModelRunner, model_dir: str | Path) -> "SpecEEDecoder":
        config = SpecEEConfig.read(model_dir)
        return cls(runner, config, load_predictors(model_dir, config, runner.device))

    def schedule(self, request_id: str) -> list[int]:
        """The depths checked for this request's next token: offline ∪ neighbours of recent exits."""
        online = {d + step for d in self.recent.get(request_id, ()) for step in NEIGHBOURS}
        return sorted((set(self.config.offline) | online) & set(self.config.layers))

    @torch.inference_mode()
    def step(self, requests: list[tuple[str, list[int]]]) -> list[int]:
        """requests: (request id, committed tokens) -> the next token of each."""
        runner, adapter_depth = self.runner, self.adapter.exit_layer
        logits = runner.forward([ForwardItem(rid, runner.sync(rid, committed, adapter_depth), depth=adapter_depth)
                                 for rid, committed in requests])
        tokens = []
        for (rid, committed), row in zip(requests, logits):
            top = row[-1].topk(self.config.candidates)
            tokens.append(_Token(rid, committed, top.indices, top.values.softmax(-1), self.schedule(rid)))
        for depth in sorted({d for t in tokens for d in t.schedule}):
            checking = [t for t in tokens if t.token is None and depth in t.schedule]
            if not checking:
                continue
            at_depth = runner.forward([ForwardItem(t.request_id, runner.sync(t.request_id, t.committed, depth),
                                                   depth=depth, states_only=True) for t in checking])
            states = torch.cat([s[-1:] for s in at_depth])
            cand_logits = candidate_logits(runner, states, torch.stack([t.candidates for t in checking]))
            features, probs = candidate_features(cand_logits, torch.stack([t.probs for t in checking]))
            scores = self.predictors[depth](features)
            likeliest = torch.stack([t.candidates for t in checking]).gather(1, cand_logits.argmax(-1, keepdim=True))
            # one read-back per checked depth: which tokens exit, and as what (float64 holds token ids exactly)
            scores_host, likeliest_host = torch.stack([scores.double(), likeliest.squeeze(1).double()]).tolist()
            for t, score, p, token in zip(checking, scores_host, probs, map(int, likeliest_host)):
                t.probs = p
                if score > self.config.threshold:
                    t.token, t.exit_depth = token, depth
        rest = [t for t in tokens if t.token is None]
        if rest:
            full = runner.forward([ForwardItem(t.request_id, runner.sync(t.request_id, t.committed)) for t in rest])
            for t, token in zip(rest, torch.cat([row[-1:] for row in full]).argmax(-1).tolist()):
                t.token, t.exit_depth = token, runner.num_layers
        out: list[int] = []
        for t in tokens:
            assert t.token is not None  # decided at an exit or, failing that, at full depth above
            self.exits[t.exit_depth] = self.exits.get(t.exit_depth, 0) + 1
            if t.exit_depth < runner.num_layers:
                self.recent.setdefault(t.request_id, deque(maxlen=RECENT_EXITS)).append(t.exit_depth)
            out.append(t.token)
        return out

    def release(self, request_id: str) -> None:
        self.recent.pop(request_id, None)


@torch.no_grad()
def teacher_forced_losses(runner: ModelRunner, predictors: dict[int, ExitPredictor], config: SpecEEConfig,
                          windows: torch.Tensor) -> dict[str, float]:
    """windows: [B, S+1] token ids. Next-token cross-entropy of the full model and of SpecEE's exits
    (each position exits at the first offline depth whose predictor fires, predicting with that
    depth's states through the shared head; otherwise the full model's), with the gold prefix."""
    from specd.worker.kv_cache import RequestKV
    from specd.worker.model import PackedBatch

    model, adapter = runner.model, runner.adapter
    if adapter is None:
        raise ValueError("SpecEE takes its candidates from the Kangaroo self-draft: the runner needs the adapter")
    x, y = windows[:, :-1], windows[:, 1:].reshape(-1)
    B, S = x.shape
    layers = model.config.num_hidden_layers
    batch = PackedBatch(tokens=x.reshape(-1), positions=torch.arange(S, device=x.device).repeat(B),
                        caches=[RequestKV(layers + 1) for _ in range(B)], starts=[0] * B, counts=[S] * B)
    rope = model.model.rotary.tables(batch.positions, torch.float32)
    h = model.model.embed_tokens(batch.tokens)
    h = model.run_layers(h, batch, 0, adapter.exit_layer, rope)
    draft_logits = adapter.logits(adapter(h, batch, layers, rope), model)
    candidates = draft_logits.topk(config.candidates).indices
    previous = draft_logits.gather(1, candidates).softmax(-1)
    chosen = torch.full((len(y),), -1, device=x.device)  # exit depth per position (-1: none)
    exit_logits = torch.zeros(len(y), model.config.vocab_size, device=x.device)
    depth = adapter.exit_layer
    for check in sorted(config.offline):
        h = model.run_layers(h, batch, depth, check, rope)
        depth = check
        features, previous = candidate_features(candidate_logits(runner, h, candidates), previous)
        fire = (predictors[check](features) > config.threshold) & (chosen < 0)
        chosen[fire] = check
        exit_logits[fire] = model.logits(h[fire])
    h = model.run_layers(h, batch, depth, layers, rope)
    full = model.logits(h)
    exited = chosen >= 0
    mixed = torch.where(exited.unsqueeze(1), exit_logits, full)
    loss = torch.nn.functional.cross_entropy
    return {"plain": loss(full, y).item(), "specee": loss(mixed, y).item(),
            "exit_fraction": exited.float().mean().item()}
