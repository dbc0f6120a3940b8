"""ModelRunner: one model, many requests, batched incremental decoding over per-request KV caches.

The runner's contract is token-level and stateless for the caller: hand it the committed token
sequence of a request (`sync`) and it returns the suffix its cache does not hold yet, rolling
the cache back past any token that was not committed (rejected draft tokens). `forward` appends
new tokens for many requests in one packed pass and returns logits for the positions asked for.

A forward may stop at a depth (`ForwardItem.depth`, a number of layers): early-exit methods
draft from the first layers and finish the same tokens later. The tokens of a later pass that
the cache already holds at a shallower depth are resumed from their kept states, so no layer
runs twice for a token (see kv_cache.py). A runner built with a Kangaroo adapter runs it on
every token that crosses the adapter's exit, and a forward to exactly that depth returns the
adapter's logits.

Under tensor parallelism every process holds the same runner over its shard of the model; the
driving process (rank 0) replicates each state-changing call to the others through
`replicate`, so their caches stay identical in shape and content.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from specd.errors import SpecdError
from specd.worker.checkpoint import load_model
from specd.worker.device import CPU, Placement, to_device
from specd.worker.early_exit import KangarooAdapter, load_adapter
from specd.worker.kv_cache import KVPool, RequestKV
from specd.worker.model import LlamaForCausalLM, PackedBatch

DEFAULT_KV_BUDGET_MIB = 512


class ContextTooLong(SpecdError):
    """A request would grow past the model's maximum context length."""


@dataclass(frozen=True)
class ForwardItem:
    request_id: str
    tokens: list[int]  # the sequence from the first position the cache holds shallower than `depth`
    num_logits: int = 1  # logits are returned for this many trailing positions (0: prefill only)
    depth: int | None = None  # layers to run (an early exit); None: the whole model
    states_only: bool = False  # return the states at `depth` ([num_logits, hidden]) instead of logits


@dataclass
class _Rows:
    """One item of a forward: the positions it runs, their depths so far and their states."""

    item: ForwardItem
    cache: RequestKV
    start: int  # position of the item's first token
    depth: int  # target depth
    depths: list[int]  # per token, non-increasing
    new_tokens: list[int]  # the item's tokens the cache did not hold
    states: torch.Tensor  # [tokens, hidden]
    side: torch.Tensor | None = None  # adapter output of the tokens that crossed its exit


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB,
                 adapter: KangarooAdapter | None = None) -> None:
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device  # every tensor of a pass is made here
        self.adapter = adapter
        cfg = self.config
        self.num_layers = cfg.num_hidden_layers
        kv_layers = cfg.num_hidden_layers + (adapter is not None)  # the adapter's cache is one more layer
        bytes_per_token = 2 * kv_layers * cfg.num_key_value_heads * cfg.head_dim * _dtype_size(model)
        budget_tokens = int(kv_budget_mib * 2**20 // bytes_per_token)
        self.kv = KVPool(kv_layers, budget_tokens, bytes_per_token, full_depth=cfg.num_hidden_layers)
        self.max_context = cfg.max_position_embeddings
        self.forward_tokens = 0  # tokens in the last forward pass

    @classmethod
    def from_dir(cls, model_dir: str | Path, kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB,
                 placement: Placement = CPU, with_adapter: bool = False) -> "ModelRunner":
        model = load_model(model_dir, placement.dtype, placement.device)
        model.fuse_projections()  # one process holds the whole model (tensor_parallel.py builds sharded ones)
        adapter = load_adapter(model_dir, model.config, placement.dtype, placement.device) if with_adapter else None
        return cls(model, kv_budget_mib, adapter)

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

    def replicate(self, op: tuple) -> None:
        """Send a state-changing call to the tensor-parallel followers: none here
        (`tensor_parallel.TensorParallelRunner` has them)."""

    def close(self) -> None:
        """Release what the runner holds beyond memory: nothing here (see TensorParallelRunner)."""

    # -- queries -----------------------------------------------------------------------------------

    def cached_tokens(self, request_id: str) -> list[int]:
        return list(self.kv.get(request_id).tokens) if request_id in self.kv else []

    def sync(self, request_id: str, committed: list[int], depth: int | None = None) -> list[int]:
        """Roll the cache back to its agreement with `committed`; return the tokens still to feed
        to bring it to `depth` layers (the whole model by default).

        At least the last committed token is always returned: its logits predict the next one.
        Cached tokens past the committed ones are kept while they agree (drafts of an early-exit
        method, resumed by the next forward that feeds them).
        """
        if not committed:
            raise SpecdError("a request needs at least one token")
        if request_id not in self.kv:
            return list(committed)
        cache = self.kv.get(request_id)
        common = cache.common_prefix(committed)
        if common < min(cache.length, len(committed)):
            self.truncate(request_id, common)
        reach = cache.reached(self.num_layers if depth is None else depth)
        if reach >= len(committed):
            self.truncate(request_id, len(committed) - 1)
            reach = len(committed) - 1
        return committed[reach:]

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
            depth = self.num_layers if item.depth is None else item.depth
            if not 0 < depth <= self.num_layers:
                raise SpecdError(f"request {item.request_id!r}: depth {depth} out of range [1, {self.num_layers}]")
            start, held = 0, 0
            if item.request_id in self.kv:
                cache = self.kv.get(item.request_id)
                start = cache.reached(depth)
                held = _matching(cache.tokens[start:], item.tokens)
            if start + len(item.tokens) > self.max_context:
                raise ContextTooLong(
                    f"request {item.request_id!r} would reach {start + len(item.tokens)} tokens; "
                    f"the model's context is {self.max_context}"
                )
            growth[item.request_id] = len(item.tokens) - held
        self.kv.reserve(growth)

    @torch.inference_mode()
    def apply_forward(self, items: list[ForwardItem]) -> list[torch.Tensor]:
        rows = [self._rows(item) for item in items]
        self._run_layers(rows)
        logits = self._exit_logits(rows)
        for r in rows:
            r.cache.advance(r.start, r.new_tokens, r.depth, None if r.depth == self.num_layers else r.states)
        self.forward_tokens = sum(len(r.depths) for r in rows)
        return logits

    def _rows(self, item: ForwardItem) -> _Rows:
        """Line the item's tokens up with what its cache holds: resume the tokens it holds at a
        shallower depth, drop what disagrees or was not asked for, embed the rest."""
        cache = self.kv.get(item.request_id)
        depth = self.num_layers if item.depth is None else item.depth
        start = cache.reached(depth)
        held = _matching(cache.tokens[start:], item.tokens)
        if cache.length > start + held:
            cache.truncate(start + held)
        new_tokens = item.tokens[held:]
        embedded = self.model.model.embed_tokens(to_device(new_tokens, torch.long, self.device))
        states = torch.cat([cache.states(start, start + held), embedded]) if held else embedded
        return _Rows(item, cache, start, depth, cache.depths[start:] + [0] * len(new_tokens), new_tokens, states)

    def _run_layers(self, rows: list[_Rows]) -> None:
        """Run every item's tokens from their own depths to the item's depth, layer range by layer
        range: within a range the same tokens take part, packed into one matrix."""
        adapter = self.adapter
        adapter_exit = adapter.exit_layer if adapter is not None else None
        bounds = sorted({d for r in rows for d in r.depths} | {r.depth for r in rows}
                        | ({adapter_exit} if adapter_exit is not None else set()))
        for first, last in zip(bounds, bounds[1:]):
            taking_part = []  # (rows, index of its first token in this range)
            for r in rows:
                if r.depth >= last:
                    joined = next((i for i, d in enumerate(r.depths) if d <= first), len(r.depths))
                    if joined < len(r.depths):
                        taking_part.append((r, joined))
            if not taking_part:
                continue
            positions = [p for r, j in taking_part for p in range(r.start + j, r.start + len(r.depths))]
            batch = PackedBatch(
                tokens=torch.empty(0, dtype=torch.long, device=self.device),
                positions=to_device(positions, torch.long, self.device),
                caches=[r.cache for r, _ in taking_part],
                starts=[r.start + j for r, j in taking_part],
                counts=[len(r.depths) - j for r, j in taking_part],
            )
            x = torch.cat([r.states[j:] for r, j in taking_part])
            rope = self.model.model.rotary.tables(batch.positions, x.dtype)
            x = self.model.run_layers(x, batch, first, last, rope)
            side = adapter(x, batch, self.num_layers, rope) if adapter is not None and last == adapter_exit else None
            for (r, j), part, side_part in zip(taking_part, torch.split(x, batch.counts),
                                               torch.split(side, batch.counts) if side is not None else
                                               [None] * len(taking_part)):
                r.states = torch.cat([r.states[:j], part]) if j else part
                if side_part is not None and r.depth == adapter_exit:
                    r.side = side_part

    def _exit_logits(self, rows: list[_Rows]) -> list[torch.Tensor]:
        """[num_logits, vocab] per item: the LM head over the trailing states at the item's depth
        (the adapter's states at the adapter's exit); the states themselves when asked for."""
        out = []
        for r in rows:
            n = r.item.num_logits
            if not n:
                out.append(r.states.new_empty(0, self.config.vocab_size))
            elif r.item.states_only:
                out.append(r.states[-n:])
            elif r.side is not None and self.adapter is not None:
                out.append(self.adapter.logits(r.side[-n:], self.model))
            else:
                out.append(self.model.logits(r.states[-n:]))
        return out

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


def _matching(cached: list[int], tokens: list[int]) -> int:
    """Leading tokens of `tokens` that the cache already holds at these positions."""
    n = 0
    while n < min(len(cached), len(tokens)) and cached[n] == tokens[n]:
        n += 1
    return n


def _dtype_size(model: torch.nn.Module) -> int:
    return next(model.parameters()).element_size()
