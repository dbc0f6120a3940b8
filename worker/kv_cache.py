"""Per-request KV cache with rollback, and the memory budget shared by all requests of a model.

Each request owns one `RequestKV`: for every layer a key and a value tensor of shape
[kv_heads, capacity, head_dim]. Requests of different lengths therefore sit side by side
without padding. `tokens` records which token ids the cache holds, so that a caller can hand
in the committed sequence and learn which suffix still has to be computed (see `sync`).

Early-exit methods run a token through only the first layers of the model (a draft from an
exit, a tentative check at an intermediate exit) and finish it later. So each cached token has
a *depth*, the number of layers whose KV it has written, and the depths never increase along
the sequence (a token's attention at layer l needs the keys of every earlier token at l). The
states entering layer `depth` of the tokens not at full depth are kept in `partial`, so a later
pass resumes them where they stopped instead of recomputing the shallow layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specd.errors import SpecdError

_MIN_CAPACITY = 64


class KVBudgetExceeded(SpecdError):
    """Admitting more tokens would exceed the model's KV memory budget."""


@dataclass
class RequestKV:
    num_layers: int  # KV layers: the model's, plus one per side layer (an early-exit adapter)
    full_depth: int = 0  # the model's layers; 0 (the default): num_layers
    keys: list[torch.Tensor | None] = field(init=False)
    values: list[torch.Tensor | None] = field(init=False)
    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)  # layers each token has been through
    partial: torch.Tensor | None = None  # [tokens not at full depth, hidden]: their states at their depth

    def __post_init__(self) -> None:
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        if not self.full_depth:
            self.full_depth = self.num_layers

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def full_length(self) -> int:
        """Leading tokens that have been through every layer."""
        return self.reached(self.full_depth)

    def reached(self, depth: int) -> int:
        """Leading tokens that have been through at least `depth` layers (depths never increase)."""
        n = len(self.depths)
        while n and self.depths[n - 1] < depth:
            n -= 1
        return n

    def advance(self, start: int, new_tokens: list[int], depth: int, states: torch.Tensor | None) -> None:
        """Tokens start.. (the cached ones from there, then new_tokens) have now been through `depth`
        layers, their KV written; states: [those tokens, hidden] entering layer `depth`, None at full
        depth. Every token before `start` is at least that deep."""
        full = self.full_length
        self.tokens.extend(new_tokens)
        self.depths[start:] = [depth] * (self.length - start)
        if depth >= self.full_depth:
            self.partial = None
        else:
            if states is None:
                raise ValueError(f"the states entering layer {depth} are needed below full depth")
            kept = self.partial[: start - full] if self.partial is not None else states[:0]
            self.partial = torch.cat([kept, states])

    def states(self, start: int, end: int) -> torch.Tensor:
        """[end - start, hidden]: the kept states of partial tokens start..end-1."""
        if self.partial is None:
            raise ValueError("no token of this cache is short of full depth")
        full = self.full_length
        return self.partial[start - full : end - full]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ([kv_heads, n, head_dim]) at positions start.. and return all keys/values so far."""
        end = start + k.shape[1]
        cache_k, cache_v = self.keys[layer], self.values[layer]
        if cache_k is None or cache_v is None or cache_k.shape[1] < end:
            capacity = max(end, _MIN_CAPACITY, 2 * (0 if cache_k is None else cache_k.shape[1]))
            grown_k = k.new_empty(k.shape[0], capacity, k.shape[2])
            grown_v = v.new_empty(v.shape[0], capacity, v.shape[2])
            if cache_k is not None and cache_v is not None:
                grown_k[:, :start] = cache_k[:, :start]
                grown_v[:, :start] = cache_v[:, :start]
            self.keys[layer], self.values[layer] = cache_k, cache_v = grown_k, grown_v
        cache_k[:, start:end] = k
        cache_v[:, start:end] = v
        return cache_k[:, :end], cache_v[:, :end]

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` tokens (the tensors keep their capacity)."""
        if length < 0 or length > self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        if self.partial is not None:
            keep = length - self.full_length
            self.partial = self.partial[:keep] if keep > 0 else None
        del self.tokens[length:]
        del self.depths[length:]

    def common_prefix(self, committed: list[int]) -> int:
        """Number of leading cached tokens that agree with the committed sequence."""
        n = min(len(self.tokens), len(committed))
        if self.tokens[:n] == committed[:n]:
            return n
        i = 0
        while self.tokens[i] == committed[i]:
            i += 1
        return i


class KVPool:
    """All request caches of one model, with a budget counted in cached tokens."""

    def __init__(self, num_layers: int, budget_tokens: int, bytes_per_token: int,
                 full_depth: int | None = None) -> None:
        if budget_tokens <= 0:
            raise SpecdError(f"kv budget must be positive, got {budget_tokens} tokens")
        self.num_layers = num_layers
        self.full_depth = num_layers if full_depth is None else full_depth
        self.budget_tokens = budget_tokens
        self.bytes_per_token = bytes_per_token
        self._requests: dict[str, RequestKV] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    def __len__(self) -> int:
        return len(self._requests)

    def get(self, request_id: str) -> RequestKV:
        cache = self._requests.get(request_id)
        if cache is None:
            cache = self._requests[request_id] = RequestKV(self.num_layers, self.full_depth)
        return cache

    def used_tokens(self) -> int:
        return sum(c.length for c in self._requests.values())

    def reserve(self, growth: dict[str, int]) -> None:
        """Raise KVBudgetExceeded unless the caches can grow by these many tokens per request."""
        used = self.used_tokens()
        need = used + sum(growth.values())
        if need > self.budget_tokens:
            mib = self.budget_tokens * self.bytes_per_token / 2**20
            raise KVBudgetExceeded(
                f"KV cache budget exhausted: {need} tokens needed, budget is {self.budget_tokens} tokens "
                f"({mib:.1f} MiB), {used} in use by {len(self._requests)} requests"
            )

    def release(self, request_id: str) -> bool:
        return self._requests.pop(request_id, None) is not None
