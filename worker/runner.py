"""ModelRunner: one model, many requests, batched incremental decoding over per-request KV caches.

The runner's contract is token-level and stateless for the caller: hand it the committed token
sequence of a request (`sync`) and it returns the suffix its cache does not hold yet, rolling
the cache back past any token that was not committed (rejected draft tokens). `forward` appends
new tokens for many requests in one packed pass and returns logits for the positions asked for.

Under tensor parallelism every process holds the same runner over its shard of the model; the
driving process (rank 0) replicates each state-changing call to the others through
`replicate`, so their caches stay identical in shape and content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from specd.errors import SpecdError
from specd.worker.kv_cache import KVPool
from specd.worker.checkpoint import load_model
from specd.worker.model import LlamaForCausalLM, PackedBatch

DEFAULT_KV_BUDGET_MIB = 512


class ContextTooLong(SpecdError):
    """A request would grow past the model's maximum context length."""


@dataclass(frozen=True)
class ForwardItem:
    request_id: str
    tokens: list[int]  # new tokens to append to the request's cache
    num_logits: int = 1  # logits are returned for this many trailing positions (0: prefill only)


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB) -> None:
        self.model = model
        self.config = model.config
        cfg = self.config
        bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * _dtype_size(model)
        budget_tokens = int(kv_budget_mib * 2**20 // bytes_per_token)
        self.kv = KVPool(cfg.num_hidden_layers, budget_tokens, bytes_per_token)
        self.max_context = cfg.max_position_embeddings
        self.replicate: Callable[[tuple], None] = lambda op: None
        self.forward_tokens = 0  # tokens in the last forward pass

    @classmethod
    def from_dir(cls, model_dir: str | Path, kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB,
                 dtype: torch.dtype = torch.float32) -> "ModelRunner":
        return cls(load_model(model_dir, dtype), kv_budget_mib)

    # -- state-changing calls (replicated to tensor-parallel followers) -------------------------

    def forward(self, items: list[ForwardItem]) -> list[torch.Tensor]:
        """Append each item's tokens to its cache in one pass; return [num_logits, vocab] per item."""
        self._validate(items)
        self.replicate(("forward", items))
        return self.apply_forward(items)

    def truncate(self, request_id: str, length: int) -> None:
        if request_id in self.kv and self.kv.get(request_id).length > length:
            self.replicate(("truncate", request_id, length))
            self.kv.get(request_id).truncate(length)

    def release(self, request_id: str) -> bool:
        """Free a request's cache; returns whether it existed."""
        if request_id not in self.kv:
            return False
        self.replicate(("release", request_id))
        return self.kv.release(request_id)

    def close(self) -> None:
        """Stop tensor-parallel followers, if any (replaced by `tensor_parallel.load_runner`)."""

    # -- queries -----------------------------------------------------------------------------------

    def cached_tokens(self, request_id: str) -> list[int]:
        return list(self.kv.get(request_id).tokens) if request_id in self.kv else []

    def sync(self, request_id: str, committed: list[int]) -> list[int]:
        """Roll the cache back to its agreement with `committed`; return the tokens still to feed.

        At least the last committed token is always returned: its logits predict the next one.
        """
        if not committed:
            raise SpecdError("a request needs at least one token")
        keep = 0
        if request_id in self.kv:
            keep = min(self.kv.get(request_id).common_prefix(committed), len(committed) - 1)
            self.truncate(request_id, keep)
        return committed[keep:]

    # -- internals ---------------------------------------------------------------------------------

    def _validate(self, items: list[ForwardItem]) -> None:
        seen: set[str] = set()
        growth: dict[str, int] = {}
        vocab = self.config.vocab_size
        for item in items:
            if item.request_id in seen:
                raise SpecdError(f"request {item.request_id!r} appears twice in one batch")
            seen.add(item.request_id)
            if not item.tokens:
                raise SpecdError(f"request {item.request_id!r}: no tokens to feed")
            if not 0 <= item.num_logits <= len(item.tokens):
                raise SpecdError(f"request {item.request_id!r}: num_logits {item.num_logits} out of range")
            if min(item.tokens) < 0 or max(item.tokens) >= vocab:
                raise SpecdError(f"request {item.request_id!r}: token id out of range [0, {vocab})")
            length = self.kv.get(item.request_id).length if item.request_id in self.kv else 0
            if length + len(item.tokens) > self.max_context:
                raise ContextTooLong(
                    f"request {item.request_id!r} would reach {length + len(item.tokens)} tokens; "
                    f"the model's context is {self.max_context}"
                )
            growth[item.request_id] = len(item.tokens)
        self.kv.reserve(growth)

    @torch.inference_mode()
    def apply_forward(self, items: list[ForwardItem]) -> list[torch.Tensor]:
        caches = [self.kv.get(item.request_id) for item in items]
        starts = [cache.length for cache in caches]
        counts = [len(item.tokens) for item in items]
        flat = [t for item in items for t in item.tokens]
        positions = [p for start, n in zip(starts, counts) for p in range(start, start + n)]
        batch = PackedBatch(
            tokens=torch.tensor(flat, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            caches=caches,
            starts=starts,
            counts=counts,
        )
        hidden = self.model.hidden_states(batch)
        rows: list[int] = []
        offset = 0
        for item, n in zip(items, counts):
            rows.extend(range(offset + n - item.num_logits, offset + n))
            offset += n
        logits = self.model.logits(hidden[rows]) if rows else hidden.new_empty(0, self.config.vocab_size)
        for cache, item in zip(caches, items):
            cache.tokens.extend(item.tokens)
        self.forward_tokens = len(flat)
        return list(torch.split(logits, [item.num_logits for item in items]))

    def apply(self, op: tuple) -> None:
        """Apply an operation replicated from the driving process (tensor-parallel followers)."""
        kind, *args = op
        if kind == "forward":
            self.apply_forward(*args)
        elif kind == "truncate":
            self.kv.get(args[0]).truncate(args[1])
        elif kind == "release":
            self.kv.release(args[0])
        else:
            raise ValueError(f"unknown replicated operation {kind!r}")


def _dtype_size(model: torch.nn.Module) -> int:
    return next(model.parameters()).element_size()
