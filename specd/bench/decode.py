"""`specd bench decode`: speculative vs plain decoding with the same target, prompts and run.

Greedy decoding over held-out prompts at several batch sizes. Plain and speculative passes
alternate for `rounds` rounds so drift in machine load hits both alike; the figures are ratios
taken within one run. Losslessness is measured: the speculative outputs are compared token by
token with plain decoding's.

Contestants interleave finely: each group of prompts (one batch) is decoded by every contestant
in turn, in a rotating order, so a drift in machine speed spreads over all of them.

Every drafting method runs in the same run (`methods`: plain, model, early-exit, hierarchical,
ngram), each at its own default speculation length, each compared with plain decoding of the
same rounds; the top-level keys are the draft model's figures at batch 1, as before.

`acceptance_rate` is α of PAPERS.md §0, the probability that a tested draft token is accepted
(accepted / (accepted + rejected); drafts after a rejection are never tested), which is the α
the theoretical bound takes. `accepted_fraction_of_proposed` counts untested drafts as lost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specd.bench import peers as bench_peers
from specd.contract import DRAFTING_METHODS
from specd.router.speculation import expected_tokens
from specd.worker.device import CPU, Placement, synchronize
from specd.worker.engine import GenerationRequest, RequestStats, SpeculativeEngine
from specd.worker.methods import DEFAULT_K, make_exit_decoder, make_proposer, needs_adapter
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.specee import teacher_forced_losses
from specd.worker.tokenizer import Tokenizer


@dataclass(frozen=True)
class DecodeBenchSettings:
    k: int = 4  # the draft model's speculation length (today's top-level figures)
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    prompts: int = 8
    max_new_tokens: int = 96
    rounds: int = 2
    methods: tuple[str, ...] = DRAFTING_METHODS


def theoretical_speedup(alpha: float, c: float, k: int) -> float:
    """PAPERS.md §0: (1 - α^(k+1)) / ((1 - α)(c·k + 1))."""
    return expected_tokens(alpha, k) / (c * k + 1)


def step_cost(runner: ModelRunner, context: list[int], repeats: int = 30) -> float:
    """Median seconds of one single-token decoding step at batch 1 after `context`."""
    runner.forward([ForwardItem("cost-probe", context, num_logits=0)])
    times = []
    for _ in range(repeats):
        runner.truncate("cost-probe", len(context))
        synchronize(runner.device)
        started = time.perf_counter()
        runner.forward([ForwardItem("cost-probe", [context[-1]])])
        synchronize(runner.device)
        times.append(time.perf_counter() - started)
    runner.release("cost-probe")
    return statistics.median(times)


@dataclass
class _Tally:
    """Time, outputs and summed stats of one method's decoding."""

    seconds: float = 0.0
    outputs: list[list[int]] = field(default_factory=list)
    stats: RequestStats = field(default_factory=RequestStats)

    def add(self, other: "_Tally") -> None:
        self.seconds += other.seconds
        self.outputs.extend(other.outputs)
        for name in ("steps", "proposed", "accepted", "rejected"):
            setattr(self.stats, name, getattr(self.stats, name) + getattr(other.stats, name))


def _timed(engine: SpeculativeEngine, prompts: list[list[int]], batch: int, k: int, max_new_tokens: int) -> _Tally:
    """Decode all prompts in groups of `batch`."""
    tally = _Tally()
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        group = [GenerationRequest(p, max_new_tokens, k=k, stop_at_eos=False) for p in prompts[i : i + batch]]
        for tokens, stats in engine.generate(group):
            tally.add(_Tally(0.0, [tokens], stats))
    tally.seconds = time.perf_counter() - started
    return tally


def _engines(target_dir: Path, draft_dir: Path, methods: tuple[str, ...],
             placement: Placement) -> dict[str, tuple[SpeculativeEngine, int]]:
    """(engine, k) per method; the methods that draft inside the target share one target runner
    (with the adapter when early-exit is among them)."""
    target = ModelRunner.from_dir(target_dir, placement=placement, with_adapter=any(needs_adapter(m) for m in methods))
    engines = {}
    for method in methods:
        if method == "plain":
            engines[method] = (SpeculativeEngine(target), 0)
        else:
            draft = ModelRunner.from_dir(draft_dir, placement=placement) if method == "model" else None
            engines[method] = (SpeculativeEngine(target, proposer=make_proposer(method, target, target_dir, draft),
                                                 exit_decoder=make_exit_decoder(method, target, target_dir)),
                               DEFAULT_K[method])
    return engines


def _method_figures(method: str, k: int | None, tally: _Tally, plain: _Tally, tokens: int, batch: int) -> dict:
    stats = tally.stats
    agree = sum(a == b for out, ref in zip(tally.outputs, plain.outputs) for a, b in zip(out, ref))
    return {
        "method": method,
        "batch_size": batch,
        "k": k,
        "tokens_per_s": round(tokens / tally.seconds, 2),
        "speedup": round(plain.seconds / tally.seconds, 3),
        # Spec-Bench's count: tokens per target pass, the bonus/correction token included
        "mean_accepted_tokens": round(tokens / stats.steps, 3),
        "acceptance_rate": round(stats.acceptance_rate, 4),
        "lossless": tally.outputs == plain.outputs,
        "agreement": round(agree / sum(len(ref) for ref in plain.outputs), 4),
    }


def specee_quality(engine: SpeculativeEngine, tokenizer: Tokenizer, texts: Sequence[str], windows: int = 32,
                   length: int = 128) -> dict:
    """SpecEE's held-out loss next to the full model's (teacher forced, specee.teacher_forced_losses)."""
    decoder = engine.exit_decoder
    if decoder is None:
        raise ValueError("SpecEE's quality needs the engine of the specee method (an exit decoder)")
    stream = [t for text in texts for t in tokenizer.encode(text)]
    stride = max(1, (len(stream) - length - 1) // windows)
    batch = torch.tensor([stream[i * stride : i * stride + length + 1] for i in range(windows)],
                         device=decoder.runner.device)
    losses = teacher_forced_losses(decoder.runner, decoder.predictors, decoder.config, batch)
    return {"held_out_loss": {"plain": round(losses["plain"], 4), "specee": round(losses["specee"], 4)},
            "held_out_loss_change": round(losses["specee"] / losses["plain"] - 1, 4),
            "held_out_exit_fraction": round(losses["exit_fraction"], 4),
            "threshold": decoder.config.threshold}


def decode_bandwidth(runner: ModelRunner, context: float, seconds_per_token: float) -> dict:
    """Memory traffic of plain decoding at batch 1: each token reads every weight once (the
    embedding only its row) and the KV cache of the context; against the device's peak."""
    weights = sum(p.numel() * p.element_size() for name, p in runner.model.named_parameters()
                  if name != "model.embed_tokens.weight" or runner.config.tie_word_embeddings)
    cfg = runner.config
    element = next(runner.model.parameters()).element_size()
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * element * context
    peak, source = peak_bandwidth(runner.device)
    achieved = (weights + kv) / seconds_per_token
    return {"bytes_per_token": int(weights + kv), "achieved_bytes_per_s": round(achieved),
            "peak_bytes_per_s": round(peak), "peak_source": source,
            "hbm_bandwidth_fraction": round(achieved / peak, 4)}


# Peak memory bandwidth of common data-centre GPUs, from their vendors' data sheets (bytes/s).
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12,
                  "H100": 3.35e12, "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12,
                  "L40S": 8.64e11, "L4": 3.0e11, "A10G": 6.0e11}


def peak_bandwidth(device: torch.device) -> tuple[float, str]:
    """(bytes/s, where the figure comes from): the data sheet of a known GPU, else a measured
    device-to-device copy (an achievable, not a peak, figure: the fraction then reads high)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BANDWIDTH.items():  # a model's specific names come before its family's
            if key in name:
                return value, f"data sheet ({name})"
    buffer = torch.empty(64 * 2**20 if device.type == "cpu" else 1 << 30, dtype=torch.uint8, device=device)
    copy = torch.empty_like(buffer)
    copy.copy_(buffer)
    times = []
    for _ in range(5):
        synchronize(device)
        started = time.perf_counter()
        copy.copy_(buffer)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return 2 * buffer.numel() / min(times), f"measured copy ({device})"


def run(target_dir: Path, draft_dir: Path, prompts: list[str], settings: DecodeBenchSettings,
        log=lambda _msg: None, peers: bool = True, held_out_texts: Sequence[str] = (),
        placement: Placement = CPU) -> dict:
    methods = tuple(dict.fromkeys(("plain", "model") + settings.methods))  # plain and model feed the top level
    engines = _engines(target_dir, draft_dir, methods, placement)
    engines["model"] = (engines["model"][0], settings.k)
    target = engines["plain"][0].target
    tokenizer = Tokenizer(target_dir)
    encoded = [tokenizer.encode(p) for p in prompts[: settings.prompts]]
    draft = engines["model"][0].draft
    if draft is None:
        raise ValueError("the model method's engine has no draft runner")
    c = step_cost(draft, encoded[0]) / step_cost(target, encoded[0])
    log(f"draft/target step cost ratio c = {c:.3f}")
    peer_reason = ("not asked for (--no-peers)" if not peers else bench_peers.unavailable_reason()
                   or (None if placement.device.type == "cpu" else "the transformers peers run on the CPU only"))
    peer_runs = {} if peer_reason else bench_peers.load_peers(target_dir, draft_dir)
    # one untimed pass of every contestant first: the first run after loading pays one-off costs
    for method in methods:
        _timed(engines[method][0], encoded[:1], 1, engines[method][1], 16)
    for generate in peer_runs.values():
        bench_peers.timed(generate, encoded[:1], 16)
    tokens = settings.rounds * len(encoded) * settings.max_new_tokens
    per_batch: list[dict] = []
    per_method: dict[str, list[dict]] = {m: [] for m in methods if m != "plain"}
    peer_figures = []
    for batch in settings.batch_sizes:
        # the peers decode one sequence at a time: they race at batch 1, in the same rounds
        names = methods + (tuple(peer_runs) if batch == 1 else ())
        tallies = {m: _Tally() for m in names}
        groups = [encoded[i : i + batch] for i in range(0, len(encoded), batch)]
        for round_ in range(settings.rounds):
            # every contestant decodes each group of prompts in turn, in an order that rotates from
            # group to group: drift in the machine's speed (it is shared) hits them all alike
            for g, group in enumerate(groups):
                shift = (round_ * len(groups) + g) % len(names)
                for name in names[shift:] + names[:shift]:
                    if name in peer_runs:
                        seconds, outputs, passes = bench_peers.timed(peer_runs[name], group, settings.max_new_tokens)
                        tallies[name].add(_Tally(seconds, outputs, RequestStats(steps=passes)))
                    else:
                        engine, k = engines[name]
                        tallies[name].add(_timed(engine, group, batch, k, settings.max_new_tokens))
            log(f"batch {batch} round {round_ + 1}: " + ", ".join(f"{m} {tallies[m].seconds:.2f}s" for m in names))
        plain = tallies["plain"]
        for method in per_method:
            figures = _method_figures(method, engines[method][1], tallies[method], plain, tokens, batch)
            per_method[method].append(figures)
        for name in peer_runs if batch == 1 else ():
            figures = _method_figures(name, bench_peers.PEER_K[name], tallies[name], plain, tokens, batch)
            figures["acceptance_rate"] = None  # not observable from outside transformers
            if name == "hf-early-exit":  # its drafts are forwards of the same model: passes are not verifications
                figures["mean_accepted_tokens"] = None
            figures["counterpart"] = bench_peers.COUNTERPART[name]
            peer_figures.append(figures)
        model = tallies["model"]
        alpha = model.stats.acceptance_rate
        per_batch.append({
            "batch_size": batch,
            "autoregressive_tokens_per_s": round(tokens / plain.seconds, 2),
            "speculative_tokens_per_s": round(tokens / model.seconds, 2),
            "speedup": round(plain.seconds / model.seconds, 3),
            "acceptance_rate": round(alpha, 4),
            "accepted_fraction_of_proposed": round(model.stats.accepted / max(model.stats.proposed, 1), 4),
            "mean_accepted_per_step": round(model.stats.accepted / model.stats.steps, 3),
            "tokens_per_step": round(tokens / model.stats.steps, 3),
            "theoretical_speedup": round(theoretical_speedup(alpha, c, settings.k), 3),
            "lossless": model.outputs == plain.outputs,
        })
    if "specee" in per_method and held_out_texts:  # approximate: its quality is reported next to its speed
        quality = specee_quality(engines["specee"][0], tokenizer, held_out_texts)
        per_method["specee"] = [{**figures, **quality} for figures in per_method["specee"]]
    first = per_batch[0]
    if 1 in settings.batch_sizes:
        seconds_per_token = 1 / per_batch[settings.batch_sizes.index(1)]["autoregressive_tokens_per_s"]
        context = statistics.mean(len(p) for p in encoded) + settings.max_new_tokens / 2
        bandwidth = decode_bandwidth(target, context, seconds_per_token)
    else:
        bandwidth = {"hbm_bandwidth_fraction": None}
    plain_figures = [{"method": "plain", "batch_size": b["batch_size"], "k": 0,
                      "tokens_per_s": b["autoregressive_tokens_per_s"], "speedup": 1.0, "mean_accepted_tokens": 1.0,
                      "acceptance_rate": 0.0, "lossless": True, "agreement": 1.0} for b in per_batch]
    return {
        **first,
        "k": settings.k,
        "draft_target_cost_ratio": round(c, 4),
        "speedup_vs_theoretical": round(first["speedup"] / first["theoretical_speedup"], 3),
        "greedy": True,
        "prompts": len(encoded),
        "max_new_tokens": settings.max_new_tokens,
        "rounds": settings.rounds,
        "torch_threads": torch.get_num_threads(),
        "device": str(target.device),
        "dtype": str(next(target.model.parameters()).dtype).removeprefix("torch."),
        "target_parameters": sum(p.numel() for p in target.model.parameters()),
        # plain decoding at batch 1: bytes read per token / time / the device's peak bandwidth
        **bandwidth,
        "batches": per_batch,
        # one object per method: its batch-1 figures, and every batch size under "batches"
        "methods": [{**figures[0], "batches": figures} for figures in
                    [plain_figures] + [per_method[m] for m in methods if m in settings.methods and m != "plain"]],
        # Hugging Face transformers on the same checkpoints, batch 1, same rounds; speedup is against
        # specd's plain decoding, `counterpart` names the specd method it competes with
        "peers": peer_figures,
        **({"peers_skipped": peer_reason} if peer_reason else {}),
    }
