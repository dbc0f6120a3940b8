"""Trains the demo target and draft models from nothing, on the Python standard library's sources.

Target and draft share one byte-level BPE tokenizer and train together: the target learns the
text, the draft learns the target (soft cross-entropy against the target's own next-token
distribution), so the acceptance rate measured later is real. Seeds and step counts are fixed,
so a run is reproducible; the default budget (1,100 steps, then on-policy distillation of the
draft) takes about 40 minutes on one CPU core; the checkpoints it wrote are committed under
specd/demo/checkpoints/ (training.json there records the settings).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from specd.demo import corpus
from specd.worker.checkpoint import save_model
from specd.worker.config import LlamaConfig
from specd.worker.kv_cache import RequestKV
from specd.worker.model import LlamaForCausalLM, PackedBatch

EOS = "<|endoftext|>"

TARGET = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=640, num_hidden_layers=8,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
DRAFT = LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 900
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 2e-3
    draft_lr: float = 3e-3
    warmup_steps: int = 40
    distill_steps: int = 200  # extra steps at the end where only the draft trains (cheaper)
    seed: int = 1234
    tokenizer_chars: int = 3_000_000
    train_chars: int = 12_000_000
    threads: int = 1  # one thread per process: 2 threads slow down badly on a shared 2-core machine
    save_dtype: str = "float16"  # halves the committed checkpoints
    # on-policy distillation of the draft on the target's own greedy continuations (on_policy.py)
    on_policy_sequences: int = 1024
    on_policy_prompt_len: int = 32
    on_policy_new_tokens: int = 96
    on_policy_steps: int = 1000
    on_policy_batch: int = 16
    on_policy_lr: float = 1e-3


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def sequence_logits(model: LlamaForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    """[B, S] tokens -> [B, S, vocab] logits, through the same packed path that serving uses."""
    B, S = tokens.shape
    layers = model.config.num_hidden_layers
    batch = PackedBatch(tokens=tokens.reshape(-1), positions=torch.arange(S).repeat(B),
                        caches=[RequestKV(layers) for _ in range(B)], starts=[0] * B, counts=[S] * B)
    return model.logits(model.hidden_states(batch)).view(B, S, -1)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out_dir: Path, settings: TrainSettings = TrainSettings(),
          log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Train both models and write them as HF-format directories out_dir/target and out_dir/draft."""
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    started = time.time()
    log(f"reading the standard library's sources from {corpus.stdlib_dir()}")
    texts = corpus.read_texts(held_out=False, max_chars=settings.train_chars)
    log(f"training a {TARGET.vocab_size}-token BPE tokenizer on {settings.tokenizer_chars / 1e6:.0f}M characters")
    tokenizer = train_tokenizer(_take_chars(texts, settings.tokenizer_chars), TARGET.vocab_size)
    eos_id = tokenizer.token_to_id(EOS)
    data = encode_corpus(tokenizer, texts)
    log(f"corpus: {len(texts)} files, {len(data) / 1e6:.2f}M tokens")

    target_cfg = replace(TARGET, eos_token_id=eos_id, bos_token_id=eos_id)
    draft_cfg = replace(DRAFT, eos_token_id=eos_id, bos_token_id=eos_id)
    target, draft = LlamaForCausalLM(target_cfg), LlamaForCausalLM(draft_cfg)
    for model in (target, draft):
        _init_weights(model)
    n_target = sum(p.numel() for p in target.parameters())
    n_draft = sum(p.numel() for p in draft.parameters())
    log(f"target {n_target / 1e6:.1f}M parameters, draft {n_draft / 1e6:.2f}M parameters")
    opt_t = torch.optim.AdamW(target.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.1)
    opt_d = torch.optim.AdamW(draft.parameters(), lr=settings.draft_lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(settings.seed)
    total = settings.steps + settings.distill_steps
    for step in range(total):
        train_target = step < settings.steps
        starts = torch.randint(0, len(data) - settings.seq_len - 1, (settings.batch_size,), generator=gen)
        window = torch.stack([data[s : s + settings.seq_len + 1] for s in starts.tolist()])
        x, y = window[:, :-1], window[:, 1:]
        target.train(train_target)
        with torch.set_grad_enabled(train_target):
            t_logits = sequence_logits(target, x)
        if train_target:
            loss_t = F.cross_entropy(t_logits.reshape(-1, t_logits.shape[-1]), y.reshape(-1))
            _step(opt_t, target, loss_t, _lr(step, settings.steps, settings.lr, settings.warmup_steps))
        d_logits = sequence_logits(draft, x)
        soft = t_logits.detach().softmax(-1)
        loss_d = -(soft * d_logits.log_softmax(-1)).sum(-1).mean()
        _step(opt_d, draft, loss_d, _lr(step, total, settings.draft_lr, settings.warmup_steps))
        if step % 10 == 0 or step == total - 1:
            elapsed = time.time() - started
            phase = "joint" if train_target else "distill"
            target_part = f"target loss {loss_t.item():.3f}  " if train_target else ""
            log(f"step {step + 1:4d}/{total} [{phase}]  {target_part}draft distill loss {loss_d.item():.3f}  "
                f"{elapsed:5.0f}s elapsed")
    target_dir, draft_dir = out_dir / "target", out_dir / "draft"
    for model, path in ((target, target_dir), (draft, draft_dir)):
        save_model(model.eval(), path, getattr(torch, settings.save_dtype))
        tokenizer.save(str(path / "tokenizer.json"))
        (path / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS}, indent=2) + "\n")
    joint_seconds = time.time() - started
    refine_draft(out_dir, settings, data, log)
    (out_dir / "training.json").write_text(json.dumps(
        {"settings": asdict(settings), "target_parameters": n_target, "draft_parameters": n_draft,
         "seconds": {"joint_and_distill": round(joint_seconds, 1),
                     "on_policy_draft": round(time.time() - started - joint_seconds, 1)}}, indent=2) + "\n")
    log(f"wrote {target_dir} and {draft_dir} in {time.time() - started:.0f}s")
    return target_dir, draft_dir


def refine_draft(out_dir: Path, settings: TrainSettings, data: torch.Tensor,
                 log: Callable[[str], None] = print) -> None:
    """Phase 3: on-policy distillation of the saved draft from the saved target, then save the draft.

    It starts from the checkpoints as written (rounded to save_dtype), so running it alone on
    a directory gives the same draft as a full run.
    """
    from specd.demo import on_policy
    from specd.worker.checkpoint import load_model

    torch.manual_seed(settings.seed + 3)
    gen = torch.Generator().manual_seed(settings.seed + 3)
    target = load_model(out_dir / "target")
    draft = load_model(out_dir / "draft").requires_grad_(True)
    log(f"on-policy distillation: {settings.on_policy_sequences} greedy target continuations")
    sequences, mask = on_policy.greedy_continuations(
        target, data, settings.on_policy_sequences, settings.on_policy_prompt_len,
        settings.on_policy_new_tokens, batch=32, generator=gen, log=log)
    on_policy.distill(draft, sequences, mask, settings.on_policy_steps, settings.on_policy_batch,
                      settings.on_policy_lr, gen, sequence_logits, log)
    save_model(draft, out_dir / "draft", getattr(torch, settings.save_dtype))


def encode_corpus(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts as one token stream, documents separated by the end-of-text token."""
    eos_id = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text).ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def _take_chars(texts: list[str], limit: int) -> list[str]:
    taken, total = [], 0
    for text in texts:
        if total >= limit:
            break
        taken.append(text)
        total += len(text)
    return taken


def _init_weights(model: LlamaForCausalLM) -> None:
    for name, param in model.named_parameters():
        if param.dim() == 2:
            torch.nn.init.normal_(param, std=0.02)
            if name.endswith(("o_proj.weight", "down_proj.weight")):  # scaled residual branches
                param.data /= math.sqrt(2 * model.config.num_hidden_layers)


def _step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
