"""Speculative sampling must reproduce the target's distribution (goodness of fit).

Each sample is a request that generates two tokens with k = 3 drafts; the empirical joint
distribution of those two tokens is compared by a chi-square test with the exact target
distribution p(x1) p(x2 | x1), computed from the target alone. A deliberately broken
acceptance rule (resampling from p instead of the residual max(0, p - q) after a rejection)
must fail the same test: that is what shows the test has power. The methods that draft inside
the target (early exit, hierarchical, n-gram) take the same test on an early-exit-capable target.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from model_support import TEST_PLACEMENT  # tests/ is on sys.path (conftest.py)
from scipy.stats import chisquare

from specd.worker import acceptance, speculation
from specd.worker.engine import GenerationRequest, SpeculativeEngine
from specd.worker.methods import make_proposer, needs_adapter
from specd.worker.runner import ForwardItem, ModelRunner
from specd.worker.sampling import SamplingParams, Stream, gumbel, probabilities, uniform

PROMPT = [17, 42, 99, 5]
SAMPLES = 3000
MIN_EXPECTED = 5.0  # chi-square cells with fewer expected counts are pooled


def _exact_joint(target_dir, params: SamplingParams, prompt: list[int] = PROMPT) -> dict[tuple[int, int], float]:
    runner = ModelRunner.from_dir(target_dir, placement=TEST_PLACEMENT)
    [first] = runner.forward([ForwardItem("x", prompt)])
    p1 = probabilities(first, params)[0]
    joint = {}
    for x1 in torch.nonzero(p1 > 0).flatten().tolist():
        runner.release("y")
        [second] = runner.forward([ForwardItem("y", prompt + [x1])])
        p2 = probabilities(second, params)[0]
        for x2 in torch.nonzero(p2 > 0).flatten().tolist():
            joint[(x1, x2)] = float(p1[x1] * p2[x2])
    return joint


def _draft_model_engine(models) -> SpeculativeEngine:
    return SpeculativeEngine(ModelRunner.from_dir(models.target, placement=TEST_PLACEMENT),
                             ModelRunner.from_dir(models.draft, placement=TEST_PLACEMENT))


def _self_drafting_engine(target_dir, method: str) -> SpeculativeEngine:
    target = ModelRunner.from_dir(target_dir, with_adapter=needs_adapter(method), placement=TEST_PLACEMENT)
    return SpeculativeEngine(target, proposer=make_proposer(method, target, target_dir))


def _repeating_prompt(target_dir) -> list[int]:
    """[17, 42, t, 5, 17, 42] with the t the target finds likeliest to come next: n-gram lookup
    drafts t, which the target then accepts often but not always."""
    runner = ModelRunner.from_dir(target_dir, placement=TEST_PLACEMENT)
    best, best_p = 0, -1.0
    for t in range(1, runner.config.vocab_size):
        prompt = [17, 42, t, 5, 17, 42]
        [logits] = runner.forward([ForwardItem("p", prompt)])
        runner.release("p")
        p = float(logits.softmax(-1)[0, t])
        if p > best_p:
            best, best_p = t, p
    return [17, 42, best, 5, 17, 42]


def _sample_pairs(engine: SpeculativeEngine, params: SamplingParams, coupling: str,
                  prompt: list[int] = PROMPT, both_outcomes: bool = False) -> list[tuple[int, int]]:
    """`coupling`: "gumbel" gives every request a seed (the Gumbel-max coupling of seeded
    requests); "rejection" leaves them unseeded (the rejection rule), with random streams made
    deterministic by the `unseeded_streams` fixture. both_outcomes: check that drafts were both
    accepted and rejected often (otherwise the test would not exercise the method's drafts)."""
    pairs, accepted, rejected = [], 0, 0
    for start in range(0, SAMPLES, 100):
        requests = [GenerationRequest(prompt, 2, SamplingParams(
                        params.temperature, params.top_k, params.top_p,
                        seed=1000 + start + i if coupling == "gumbel" else None), k=3, stop_at_eos=False)
                    for i in range(100)]
        for tokens, stats in engine.generate(requests):
            pairs.append(tuple(tokens))
            accepted, rejected = accepted + stats.accepted, rejected + stats.rejected
    if both_outcomes:
        assert min(accepted, rejected) > SAMPLES / 20, f"{accepted} accepted, {rejected} rejected drafts"
    return pairs


def _p_value(pairs: list[tuple[int, int]], joint: dict[tuple[int, int], float]) -> float:
    counts: dict[tuple[int, int], int] = {}
    for pair in pairs:
        counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) <= set(joint), "sampled a pair the target gives no probability"
    observed, expected, pooled_obs, pooled_exp = [], [], 0, 0.0
    for cell, prob in sorted(joint.items(), key=lambda kv: -kv[1]):
        if prob * len(pairs) >= MIN_EXPECTED:
            observed.append(counts.get(cell, 0))
            expected.append(prob * len(pairs))
        else:
            pooled_obs += counts.get(cell, 0)
            pooled_exp += prob * len(pairs)
    if pooled_exp >= MIN_EXPECTED:
        observed.append(pooled_obs)
        expected.append(pooled_exp)
    else:  # too little mass for a cell of its own: fold it into the smallest kept cell
        observed[-1] += pooled_obs
        expected[-1] += pooled_exp
    scale = sum(observed) / sum(expected)
    return chisquare(observed, [e * scale for e in expected]).pvalue


@pytest.fixture
def unseeded_streams(monkeypatch):
    """Unseeded requests draw a fresh random noise seed; numbered ones keep the test repeatable."""
    numbers = itertools.count(1)
    monkeypatch.setattr(SamplingParams, "noise_seed",
                        lambda self: self.seed if self.seed is not None else next(numbers))


@pytest.mark.parametrize("coupling", ["rejection", "gumbel"])
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.8, top_k=12, top_p=0.9),
], ids=["t1", "t0.8-topk12-topp0.9"])
def test_speculative_sampling_matches_target(distant_models, params, coupling, unseeded_streams):
    pairs = _sample_pairs(_draft_model_engine(distant_models), params, coupling)
    p = _p_value(pairs, _exact_joint(distant_models.target, params))
    assert p > 1e-3, f"speculative samples do not fit the target distribution (p = {p:.2e})"


@pytest.mark.parametrize("coupling", ["rejection", "gumbel"])
@pytest.mark.parametrize("method", ["early-exit", "hierarchical", "ngram"])
def test_self_drafting_sampling_matches_target(early_exit_target, method, coupling, unseeded_streams):
    params = SamplingParams(temperature=1.0)
    engine = _self_drafting_engine(early_exit_target, method)
    prompt = _repeating_prompt(early_exit_target) if method == "ngram" else PROMPT
    pairs = _sample_pairs(engine, params, coupling, prompt, both_outcomes=True)
    p = _p_value(pairs, _exact_joint(early_exit_target, params, prompt))
    assert p > 1e-3, f"{method} samples do not fit the target distribution (p = {p:.2e})"


def _broken_residual(p, q):
    """Wrong on purpose: after a rejection it samples from p, ignoring that q was already tried."""
    return p


def _broken_gumbel(monkeypatch):
    """Wrong on purpose: at the first mismatch it keeps the draft's token instead of the target's."""
    real = acceptance.accept_batch

    def keep_the_draft(drafts, *args, **kwargs):
        results = real(drafts, *args, **kwargs)
        return [acceptance.Acceptance(r.accepted + 1, d[: r.accepted + 1]) if r.accepted < len(d) else r
                for d, r in zip(drafts, results)]
    monkeypatch.setattr(speculation, "accept_batch", keep_the_draft)


@pytest.mark.parametrize("coupling", ["rejection", "gumbel"])
def test_broken_acceptance_rule_fails_the_same_test(distant_models, monkeypatch, unseeded_streams, coupling):
    if coupling == "rejection":
        monkeypatch.setattr(acceptance, "residual", _broken_residual)
    else:
        _broken_gumbel(monkeypatch)
    params = SamplingParams(temperature=1.0)
    pairs = _sample_pairs(_draft_model_engine(distant_models), params, coupling)
    p = _p_value(pairs, _exact_joint(distant_models.target, params))
    assert p < 1e-3, f"the goodness-of-fit test did not notice a biased acceptance rule (p = {p:.2e})"


def _splitmix(x: int) -> int:
    """The reference splitmix64 finaliser on Python integers (unbounded, masked to 64 bits)."""
    mask = (1 << 64) - 1
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_noise_is_a_pure_function_of_seed_position_stream_and_column():
    """The tensor hash equals a plain-integer reference (so it is the same on any device), and
    other seeds, positions or streams give other numbers."""
    mask, golden = (1 << 64) - 1, 0x9E3779B97F4A7C15
    seeds, positions = torch.tensor([7, 7, 8, 2**61 + 5]), torch.tensor([0, 1, 0, 10**6])
    got = uniform(seeds, positions, int(Stream.ACCEPT), 5)
    for row, (seed, position) in enumerate(zip(seeds.tolist(), positions.tolist())):
        key = _splitmix((seed * golden + _splitmix((position * 0xBF58476D1CE4E5B9 + Stream.ACCEPT) & mask)) & mask)
        for column in range(5):
            bits = _splitmix((key + (column + 1) * golden) & mask)
            assert float(got[row, column]) == ((bits >> 41) + 0.5) * 2.0**-23
    assert len({tuple(r) for r in got.tolist()}) == 4
    assert not torch.equal(got, uniform(seeds, positions, int(Stream.DRAFT), 5))
    assert ((got > 0) & (got < 1)).all()
    noise = gumbel(seeds, positions, int(Stream.COUPLED), 4096)
    assert torch.isfinite(noise).all() and abs(float(noise.mean()) - 0.5772) < 0.05  # Gumbel's mean: γ


def test_a_seed_reproduces_its_output_whatever_k(distant_models):
    """The Gumbel-max coupling: a seeded request's tokens do not depend on the speculation length
    (the router's goodput control changes k from iteration to iteration)."""
    engine = SpeculativeEngine(ModelRunner.from_dir(distant_models.target, placement=TEST_PLACEMENT),
                               ModelRunner.from_dir(distant_models.draft, placement=TEST_PLACEMENT))
    params = [SamplingParams(temperature=0.9, top_p=0.95, seed=seed) for seed in (1234, 1235)]
    outputs = {(p.seed, k): engine.generate([GenerationRequest(PROMPT, 24, p, k=k, stop_at_eos=False)])[0][0]
               for p in params for k in (0, 1, 3, 8)}
    for p in params:
        assert len({tuple(outputs[(p.seed, k)]) for k in (0, 1, 3, 8)}) == 1, outputs
    assert outputs[(1234, 0)] != outputs[(1235, 0)]  # the seed matters
