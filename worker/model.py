"""A Llama-architecture causal LM that decodes many requests at once from per-request KV caches.

Parameter names match Hugging Face's `LlamaForCausalLM`, so its safetensors checkpoints load
unchanged. The forward pass is "packed": the new tokens of all requests are concatenated into
one [T, hidden] matrix for the linear layers (one matmul per projection for the whole batch),
and only attention runs per request, against that request's own cache. Requests of different
lengths, and different numbers of new tokens (prefill, k+1 verification, single-step decoding),
share one pass with no padding.

Attention derives its head count from the projection's output width rather than the config,
so the same code runs unchanged when DeepSpeed's tensor parallelism shards the projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from specd.worker.config import LlamaConfig
from specd.worker.kv_cache import RequestKV


@dataclass
class PackedBatch:
    """The new tokens of several requests, concatenated, with what attention needs to split them."""

    tokens: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    caches: list[RequestKV]
    starts: list[int]  # cache length of each request before this pass
    counts: list[int]  # new tokens of each request
    masks: list[torch.Tensor | None] = field(init=False)

    def __post_init__(self) -> None:
        # token j of a request's n new tokens sits at position start + j and sees keys 0..start+j;
        # a single new token sees everything, which needs no mask
        device = self.positions.device
        self.masks = [None if n == 1 else
                      torch.arange(start + n, device=device) <= (start + torch.arange(n, device=device)).unsqueeze(1)
                      for start, n in zip(self.starts, self.counts)]


Rope = tuple[torch.Tensor, torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding in Hugging Face's half-rotation layout."""

    cos: torch.Tensor  # buffers [max_positions, head_dim]
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for these positions, shaped [T, 1, head_dim]; computed once per pass."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def apply_rotary(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x: [T, heads, head_dim]."""
    cos, sin = rope
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q: [heads, n, hd]; keys, values: [kv_heads, length, hd]; mask: [n, length] (True: may attend)
    or None -> [heads, n, hd]. PyTorch's fused kernels on a GPU; the grouped matmuls on a CPU."""
    if q.device.type == "cpu":
        return attend_grouped(q, keys, values, mask)
    return attend_fused(q, keys, values, mask)


def attend_fused(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """scaled_dot_product_attention (flash / memory-efficient kernels on CUDA), grouped-query
    heads shared without copies (enable_gqa)."""
    out = F.scaled_dot_product_attention(q.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0),
                                         attn_mask=mask, enable_gqa=True)
    return out.squeeze(0)


def attend_grouped(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   mask: torch.Tensor | None) -> torch.Tensor:
    """The group's queries of each key/value head stacked into one matrix (faster than the math
    path of scaled_dot_product_attention on a CPU for these small shapes)."""
    heads, n, hd = q.shape
    kv_heads = keys.shape[0]
    group = heads // kv_heads
    scores = (q.reshape(kv_heads, group * n, hd) @ keys.transpose(1, 2)) * hd**-0.5
    if mask is not None:
        scores = scores.view(kv_heads, group, n, -1).masked_fill(~mask, float("-inf")).view(kv_heads, group * n, -1)
    return (scores.softmax(-1) @ values).view(heads, n, hd)


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.head_dim = hd
        self.q_proj = nn.Linear(d, config.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, config.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * hd, d, bias=False)
        self.qkv: torch.Tensor | None = None  # q, k, v weights in one matrix (`fuse`)

    def fuse(self) -> None:
        """One matmul for q, k and v; the three weights become views into it (no extra memory)."""
        self.qkv = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        rows = [self.q_proj.weight.shape[0], self.k_proj.weight.shape[0], self.v_proj.weight.shape[0]]
        for proj, weight in zip((self.q_proj, self.k_proj, self.v_proj), torch.split(self.qkv, rows)):
            proj.weight.data = weight

    def forward(self, x: torch.Tensor, batch: PackedBatch, layer: int, rope: Rope) -> torch.Tensor:
        T = x.shape[0]
        if self.qkv is not None:
            q, k, v = torch.split(F.linear(x, self.qkv), [self.q_proj.weight.shape[0], self.k_proj.weight.shape[0],
                                                          self.v_proj.weight.shape[0]], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = apply_rotary(q.reshape(T, -1, self.head_dim), rope)
        k = apply_rotary(k.reshape(T, -1, self.head_dim), rope)
        v = v.reshape(T, -1, self.head_dim)
        outputs = []
        offset = 0
        for cache, start, n, mask in zip(batch.caches, batch.starts, batch.counts, batch.masks):
            q_i = q[offset : offset + n].transpose(0, 1)  # [heads, n, hd]
            keys, values = cache.write(layer, start, k[offset : offset + n].transpose(0, 1),
                                       v[offset : offset + n].transpose(0, 1))
            outputs.append(attend(q_i, keys, values, mask).transpose(0, 1).reshape(n, -1))
            offset += n
        return self.o_proj(torch.cat(outputs) if len(outputs) > 1 else outputs[0])


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.gate_up: torch.Tensor | None = None  # gate and up weights in one matrix (`fuse`)

    def fuse(self) -> None:
        self.gate_up = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        gate, up = torch.split(self.gate_up, self.gate_proj.weight.shape[0])
        self.gate_proj.weight.data, self.up_proj.weight.data = gate, up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, batch: PackedBatch, layer: int, rope: Rope) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), batch, layer, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)

    def decoder_layer(self, index: int) -> LlamaDecoderLayer:
        """Layer `index` as its own type (an nn.ModuleList hands out plain Modules)."""
        return cast(LlamaDecoderLayer, self.layers[index])


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def fuse_projections(self) -> None:
        """q/k/v and gate/up as one matmul each, for a model that is not sharded (tensor
        parallelism shards the projections by name; this keeps their names and weights)."""
        for index in range(len(self.model.layers)):
            layer = self.model.decoder_layer(index)
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def hidden_states(self, batch: PackedBatch, first_layer: int = 0, last_layer: int | None = None,
                      hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Run layers [first_layer, last_layer) and return the hidden states [T, hidden].

        With first_layer > 0, `hidden` holds the states entering that layer (early-exit methods).
        """
        x = self.model.embed_tokens(batch.tokens) if hidden is None else hidden
        last = len(self.model.layers) if last_layer is None else last_layer
        return self.run_layers(x, batch, first_layer, last, self.model.rotary.tables(batch.positions, x.dtype))

    def run_layers(self, x: torch.Tensor, batch: PackedBatch, first_layer: int, last_layer: int,
                   rope: Rope) -> torch.Tensor:
        """x: [T, hidden] entering `first_layer` -> [T, hidden] leaving layer last_layer - 1."""
        for index in range(first_layer, last_layer):
            x = self.model.layers[index](x, batch, index, rope)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> [T, vocab] through the final norm and the LM head; any layer's output may
        exit here (early-exit methods train intermediate layers for this shared head).
        The head sees a batch dimension: DeepSpeed's sharded head needs one."""
        return self.head(self.model.norm(hidden))

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """[T, hidden] normalised states -> [T, vocab] float logits."""
        return self.lm_head(normed.unsqueeze(0)).squeeze(0).float()
