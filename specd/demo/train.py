"""Trains the demo target and draft models from nothing, on the Python standard library's sources.

Phases, each starting from the files the previous one wrote (so one can be rerun alone):
1. joint: target and draft share one byte-level BPE tokenizer and train together; the target
   learns the text, the draft learns the target (soft cross-entropy against the target's own
   next-token distribution), so the acceptance rate measured later is real;
2. early-exit: the target is fine-tuned with an early-exit loss (LayerSkip-style: the outputs of
   layers 2 and 4, and one more layer in rotation, go through the shared final norm and LM head)
   so that the early-exit methods can draft and check from its own layers;
3. on-policy: the draft learns the (new) target's own greedy continuations;
4. adapter: Kangaroo's adapter learns the full model's next-token distribution from the states
   after layer 2 (soft cross-entropy; only the adapter trains);
5. specee: SpecEE's exit predictors learn, at each later layer, whether the layer's likeliest
   candidate (of the adapter's top 4) is the full model's token (binary cross-entropy).

Seeds and step counts are fixed, so a run is reproducible; the whole run takes about an hour on
one CPU core; the checkpoints it wrote are committed under specd/demo/checkpoints/
(training.json there records the settings, the time of each phase and the held-out losses).
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
from specd.errors import SpecdError
from specd.worker.checkpoint import load_model, save_model
from specd.worker.config import LlamaConfig
from specd.worker.early_exit import EarlyExits, KangarooAdapter, load_adapter, save_adapter
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
    # early-exit fine-tuning of the target: these exits every step, one other layer in rotation
    exits: tuple[int, ...] = (2, 4)
    exit_weight: float = 0.2  # loss weight of each fixed exit (the final layer's is 1)
    rotating_exit_weight: float = 0.1
    early_exit_steps: int = 400
    early_exit_lr: float = 5e-4
    # Kangaroo's adapter, at the first fixed exit
    adapter_steps: int = 600
    adapter_lr: float = 2e-3
    draft_vocabulary: int = 1024  # the self-draft proposes only the most frequent tokens (84% of the text)
    # Kangaroo's η for the demo adapter: the paper's 0.6 stopped 92% of its drafts (its distributions
    # are flatter than a 7B model's); 0.2 was near the best of 0.6/0.4/0.2/0 in a sweep (session notes)
    kangaroo_confidence: float = 0.2
    # SpecEE's exit predictors over the adapter's top candidates, at every depth past the adapter
    specee_candidates: int = 4
    specee_steps: int = 300
    specee_lr: float = 1e-3
    specee_offline_layers: int = 2  # depths where first exits concentrate, checked for every token
    # τ is calibrated: the smallest of these whose exits pick the full model's token this often on
    # fresh training windows (the paper's 0.5 exits far too eagerly for the tiny demo target)
    specee_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
    specee_precision: float = 0.995
    held_out_windows: int = 96  # windows of seq_len tokens for the held-out losses in training.json


PHASES = ("joint", "early-exit", "on-policy", "adapter", "specee")


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
    return exit_logits(model, tokens, [model.config.num_hidden_layers])[0]


def _packed(model: LlamaForCausalLM, tokens: torch.Tensor, extra_layers: int = 0) -> PackedBatch:
    B, S = tokens.shape
    layers = model.config.num_hidden_layers + extra_layers
    return PackedBatch(tokens=tokens.reshape(-1), positions=torch.arange(S).repeat(B),
                       caches=[RequestKV(layers) for _ in range(B)], starts=[0] * B, counts=[S] * B)


def exit_states(model: LlamaForCausalLM, tokens: torch.Tensor, depths: list[int],
                batch: PackedBatch | None = None) -> list[torch.Tensor]:
    """[B, S] tokens -> the [B*S, hidden] states leaving each of `depths` (ascending), in one pass."""
    batch = batch or _packed(model, tokens)
    x, first, out = None, 0, []
    for depth in depths:
        x = model.hidden_states(batch, first, depth, hidden=x)
        out.append(x)
        first = depth
    return out


def exit_logits(model: LlamaForCausalLM, tokens: torch.Tensor, depths: list[int]) -> list[torch.Tensor]:
    """[B, S] tokens -> [B, S, vocab] logits at each exit depth (ascending) through the shared head."""
    B, S = tokens.shape
    return [model.logits(h).view(B, S, -1) for h in exit_states(model, tokens, depths)]


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out_dir: Path, settings: TrainSettings = TrainSettings(), log: Callable[[str], None] = print,
          phases: tuple[str, ...] = PHASES) -> tuple[Path, Path]:
    """Run the phases (all by default) into out_dir/target and out_dir/draft; training.json records them."""
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SpecdError(f"unknown training phases {sorted(unknown)}; phases are {', '.join(PHASES)}")
    torch.set_num_threads(settings.threads)
    record_path = out_dir / "training.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() and "joint" not in phases else {}
    record["settings"] = asdict(settings)
    seconds = record.setdefault("seconds", {})
    data = None
    for phase in PHASES:
        if phase not in phases:
            continue
        started = time.time()
        log(f"phase {phase}")
        if phase == "joint":
            data, record["target_parameters"], record["draft_parameters"] = train_joint(out_dir, settings, log)
        else:
            data = data if data is not None else corpus_tokens(out_dir / "target", held_out=False, settings=settings)
            {"early-exit": fine_tune_early_exit, "on-policy": refine_draft, "adapter": train_adapter,
             "specee": train_specee}[phase](
                out_dir, settings, data, log)
        seconds[phase] = round(time.time() - started, 1)
    record["held_out_loss"] = held_out_losses(out_dir, settings)
    log(f"held-out losses: {record['held_out_loss']}")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return out_dir / "target", out_dir / "draft"


def train_joint(out_dir: Path, settings: TrainSettings, log: Callable[[str], None]) -> tuple[torch.Tensor, int, int]:
    """Phase 1. Returns the training token stream and the two models' parameter counts."""
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
        x, y = _window_batch(data, settings, gen)
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
    for model, path in ((target, out_dir / "target"), (draft, out_dir / "draft")):
        save_model(model.eval(), path, getattr(torch, settings.save_dtype))
        tokenizer.save(str(path / "tokenizer.json"))
        (path / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS}, indent=2) + "\n")
    return data, n_target, n_draft


def fine_tune_early_exit(out_dir: Path, settings: TrainSettings, data: torch.Tensor,
                         log: Callable[[str], None] = print) -> None:
    """Phase 2: the final layer's loss plus weighted early-exit losses through the shared head."""
    torch.manual_seed(settings.seed + 2)
    gen = torch.Generator().manual_seed(settings.seed + 2)
    target = load_model(out_dir / "target").requires_grad_(True).train()
    layers = target.config.num_hidden_layers
    rotation = [layer for layer in range(1, layers) if layer not in settings.exits]
    opt = torch.optim.AdamW(target.parameters(), lr=settings.early_exit_lr, betas=(0.9, 0.95), weight_decay=0.1)
    started = time.time()
    for step in range(settings.early_exit_steps):
        x, y = _window_batch(data, settings, gen)
        rotating = rotation[step % len(rotation)]
        depths = sorted({*settings.exits, rotating, layers})
        weights = ({d: settings.exit_weight for d in settings.exits}
                   | {rotating: settings.rotating_exit_weight, layers: 1.0})
        losses = {d: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                  for d, logits in zip(depths, exit_logits(target, x, depths))}
        loss = sum((weights[d] * losses[d] for d in depths), torch.zeros(()))
        _step(opt, target, loss, _lr(step, settings.early_exit_steps, settings.early_exit_lr, settings.warmup_steps))
        if step % 20 == 0 or step == settings.early_exit_steps - 1:
            parts = "  ".join(f"L{d} {losses[d].item():.3f}" for d in depths)
            log(f"step {step + 1:4d}/{settings.early_exit_steps} [early-exit]  {parts}  {time.time() - started:5.0f}s")
    save_model(target.eval(), out_dir / "target", getattr(torch, settings.save_dtype))
    EarlyExits(tuple(settings.exits), None, (settings.exits[0], settings.exits[1])).write(out_dir / "target")


def train_adapter(out_dir: Path, settings: TrainSettings, data: torch.Tensor,
                  log: Callable[[str], None] = print) -> None:
    """Phase 4: Kangaroo's adapter at the first exit, soft cross-entropy against the full model."""
    torch.manual_seed(settings.seed + 4)
    gen = torch.Generator().manual_seed(settings.seed + 4)
    target = load_model(out_dir / "target")
    exit_layer, layers = settings.exits[0], target.config.num_hidden_layers
    adapter = KangarooAdapter(target.config, exit_layer)
    with torch.no_grad():  # start from the exit's own layer: attention that already reads these states
        layer = target.model.decoder_layer(exit_layer)
        adapter.self_attn.load_state_dict(layer.self_attn.state_dict())
        adapter.input_layernorm.load_state_dict(layer.input_layernorm.state_dict())
        adapter.norm.load_state_dict(target.model.norm.state_dict())
    adapter.train()
    opt = torch.optim.AdamW(adapter.parameters(), lr=settings.adapter_lr, betas=(0.9, 0.95), weight_decay=0.0)
    started = time.time()
    for step in range(settings.adapter_steps):
        x, _ = _window_batch(data, settings, gen)
        batch = _packed(target, x, extra_layers=1)
        with torch.no_grad():
            shallow, full = exit_states(target, x, [exit_layer, layers], batch)
            soft = target.logits(full).softmax(-1)
        rope = target.model.rotary.tables(batch.positions, shallow.dtype)
        draft_logits = target.head(adapter.norm(adapter(shallow, batch, layers, rope)))
        loss = -(soft * draft_logits.log_softmax(-1)).sum(-1).mean()
        _step(opt, adapter, loss, _lr(step, settings.adapter_steps, settings.adapter_lr, settings.warmup_steps))
        if step % 20 == 0 or step == settings.adapter_steps - 1:
            agree = (draft_logits.argmax(-1) == soft.argmax(-1)).float().mean().item()
            log(f"step {step + 1:4d}/{settings.adapter_steps} [adapter]  loss {loss.item():.3f}  "
                f"argmax agreement {agree:.2f}  {time.time() - started:5.0f}s")
    counts = torch.bincount(data, minlength=target.config.vocab_size)
    adapter.vocabulary = counts.topk(settings.draft_vocabulary).indices.sort().values
    save_adapter(adapter.eval(), out_dir / "target", getattr(torch, settings.save_dtype))
    exits = EarlyExits.read(out_dir / "target")
    EarlyExits(exits.exits, exit_layer, exits.hierarchical, exits.specee, settings.kangaroo_confidence).write(
        out_dir / "target")


def train_specee(out_dir: Path, settings: TrainSettings, data: torch.Tensor,
                 log: Callable[[str], None] = print) -> None:
    """Phase 5: one exit predictor per depth past the adapter's exit; the offline schedule is the
    depths where tokens first become exitable most often."""
    from specd.worker.specee import ExitPredictor, SpecEEConfig, candidate_features, save_predictors

    torch.manual_seed(settings.seed + 5)
    gen = torch.Generator().manual_seed(settings.seed + 5)
    target = load_model(out_dir / "target")
    adapter = load_adapter(out_dir / "target", target.config)
    layers, adapter_depth, k = target.config.num_hidden_layers, adapter.exit_layer, settings.specee_candidates
    depths = list(range(adapter_depth + 1, layers))
    predictors = {d: ExitPredictor(k) for d in depths}
    opt = torch.optim.Adam([p for m in predictors.values() for p in m.parameters()], lr=settings.specee_lr)
    first_exits = torch.zeros(layers + 1)
    started = time.time()
    for step in range(settings.specee_steps):
        x, _ = _window_batch(data, settings, gen)
        with torch.no_grad():
            batch = _packed(target, x, extra_layers=1)
            states = exit_states(target, x, [adapter_depth, *depths, layers], batch)
            rope = target.model.rotary.tables(batch.positions, states[0].dtype)
            draft_logits = adapter.logits(adapter(states[0], batch, layers, rope), target)
            candidates = draft_logits.topk(k).indices  # [N, k]
            final = target.logits(states[-1]).argmax(-1)
            rows = target.lm_head.weight[candidates]
            layer_logits = [torch.einsum("nh,nkh->nk", target.model.norm(h), rows) for h in states[1:-1]]
            layer_probs = [draft_logits.gather(1, candidates).softmax(-1)] + [x.softmax(-1) for x in layer_logits]
            labels = [(candidates.gather(1, x.argmax(-1, keepdim=True)).squeeze(1) == final).float()
                      for x in layer_logits]
            exitable = torch.stack(labels + [torch.ones_like(labels[0])])  # [depths + 1, N]
            first_exits.index_add_(0, torch.tensor([*depths, layers])[exitable.argmax(0)], torch.ones(len(final)))
        loss = torch.zeros(())
        for i, (depth, logits, label) in enumerate(zip(depths, layer_logits, labels)):
            # the last checked layer varies with the schedule: any earlier one, or the adapter's
            previous = layer_probs[int(torch.randint(0, i + 1, (1,), generator=gen))]
            features, _ = candidate_features(logits, previous)
            loss = loss + F.binary_cross_entropy(predictors[depth](features), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == settings.specee_steps - 1:
            rates = " ".join(f"L{d} {label.mean().item():.2f}" for d, label in zip(depths, labels))
            log(f"step {step + 1:4d}/{settings.specee_steps} [specee]  loss {loss.item() / len(depths):.3f}  "
                f"exitable {rates}  {time.time() - started:5.0f}s")
    ranked = sorted(depths, key=lambda d: -first_exits[d].item())
    threshold = _calibrate_threshold(target, adapter, predictors, depths, data, settings, gen, log)
    config = SpecEEConfig(k, tuple(depths), tuple(sorted(ranked[: settings.specee_offline_layers])), threshold)
    save_predictors({d: p.eval() for d, p in predictors.items()}, out_dir / "target",
                    getattr(torch, settings.save_dtype))
    exits = EarlyExits.read(out_dir / "target")
    EarlyExits(exits.exits, exits.adapter_exit, exits.hierarchical, config.as_json(), exits.confidence).write(
        out_dir / "target")
    log(f"SpecEE offline schedule {config.offline}, τ = {threshold}; first exitable depth counts "
        f"{ {d: int(first_exits[d]) for d in [*depths, layers]} }")


@torch.no_grad()
def _calibrate_threshold(target: LlamaForCausalLM, adapter: KangarooAdapter, predictors: dict, depths: list[int],
                         data: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                         log: Callable[[str], None], windows: int = 8) -> float:
    """The smallest τ whose first exits (checking every depth in order) pick the full model's token
    with at least settings.specee_precision, on fresh training windows."""
    from specd.worker.specee import candidate_features

    layers, k = target.config.num_hidden_layers, settings.specee_candidates
    # per window, per depth: [N] predictor scores, [N] whether its token is right
    per_window_scores: list[torch.Tensor] = []
    per_window_correct: list[torch.Tensor] = []
    for _ in range(windows):
        x, _ = _window_batch(data, settings, gen)
        batch = _packed(target, x, extra_layers=1)
        states = exit_states(target, x, [adapter.exit_layer, *depths, layers], batch)
        rope = target.model.rotary.tables(batch.positions, states[0].dtype)
        draft_logits = adapter.logits(adapter(states[0], batch, layers, rope), target)
        candidates = draft_logits.topk(k).indices
        final = target.logits(states[-1]).argmax(-1)
        rows = target.lm_head.weight[candidates]
        previous = draft_logits.gather(1, candidates).softmax(-1)
        window_scores, window_correct = [], []
        for depth, h in zip(depths, states[1:-1]):
            logits = torch.einsum("nh,nkh->nk", target.model.norm(h), rows)
            features, previous = candidate_features(logits, previous)
            window_scores.append(predictors[depth](features))
            window_correct.append(candidates.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1) == final)
        per_window_scores.append(torch.stack(window_scores))
        per_window_correct.append(torch.stack(window_correct))
    scores, correct = torch.cat(per_window_scores, 1), torch.cat(per_window_correct, 1)  # [depths, N]
    for threshold in settings.specee_thresholds:
        fired = scores > threshold
        exits = fired.any(0)
        first = fired.float().argmax(0)
        right = correct.gather(0, first.unsqueeze(0)).squeeze(0)
        precision = right[exits].float().mean().item() if exits.any() else 1.0
        log(f"  τ {threshold}: {exits.float().mean().item():.2f} of tokens exit early, {precision:.4f} of them right")
        if precision >= settings.specee_precision:
            return threshold
    return settings.specee_thresholds[-1]


@torch.no_grad()
def held_out_losses(out_dir: Path, settings: TrainSettings) -> dict[str, float]:
    """Mean next-token cross-entropy on held-out files: the target at every exit and the draft."""
    data = corpus_tokens(out_dir / "target", held_out=True, settings=settings)
    span = settings.seq_len + 1
    stride = max(1, (len(data) - span) // settings.held_out_windows)
    windows = torch.stack([data[i * stride : i * stride + span] for i in range(settings.held_out_windows)])
    x, y = windows[:, :-1], windows[:, 1:]
    target, draft = load_model(out_dir / "target"), load_model(out_dir / "draft")
    layers = target.config.num_hidden_layers
    exits = EarlyExits.read(out_dir / "target").exits if (out_dir / "target" / "early_exit.json").is_file() else ()
    depths = sorted({*exits, layers})
    out: dict[str, float] = {}
    for start in range(0, len(x), 16):
        chunk_x, chunk_y = x[start : start + 16], y[start : start + 16].reshape(-1)
        named = {f"target_layer_{d}": logits for d, logits in zip(depths, exit_logits(target, chunk_x, depths))}
        named["target"] = named.pop(f"target_layer_{layers}")
        named["draft"] = sequence_logits(draft, chunk_x)
        for name, logits in named.items():
            out[name] = out.get(name, 0.0) + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk_y,
                                                             reduction="sum").item()
    return {name: round(total / y.numel(), 4) for name, total in sorted(out.items())}


def corpus_tokens(model_dir: Path, held_out: bool, settings: TrainSettings) -> torch.Tensor:
    """The training (or held-out) texts encoded with the tokenizer saved in model_dir."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    texts = corpus.read_texts(held_out=held_out, max_chars=None if held_out else settings.train_chars)
    return encode_corpus(tokenizer, texts)


def _window_batch(data: torch.Tensor, settings: TrainSettings,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(data) - settings.seq_len - 1, (settings.batch_size,), generator=gen)
    window = torch.stack([data[s : s + settings.seq_len + 1] for s in starts.tolist()])
    return window[:, :-1], window[:, 1:]


def refine_draft(out_dir: Path, settings: TrainSettings, data: torch.Tensor,
                 log: Callable[[str], None] = print) -> None:
    """Phase 3: on-policy distillation of the saved draft from the saved target, then save the draft."""
    from specd.demo import on_policy

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
