"""Goodput speculation control, the online cost model and the acceptance estimate (no gRPC)."""

from __future__ import annotations

import random

import pytest

from specd.proto.v1 import common_pb2
from specd.router.request import AcceptanceEstimate, Request
from specd.router.speculation import CostModel, LinearFit, SpeculationControl, expected_tokens


def request(remaining: int = 100, max_k: int = 8, alpha: float = 0.7) -> Request:
    return Request(id="r", prompt=[1], max_new_tokens=remaining, sampling=common_pb2.SamplingParams(), max_k=max_k,
                   stop_token=None, predicted_length=remaining, acceptance=AcceptanceEstimate.seeded(alpha))


def costs(draft_pass: float, target_base: float = 0.010, target_per_token: float = 0.0005) -> CostModel:
    return CostModel(target_pass=LinearFit(target_base, target_per_token), draft_pass=LinearFit(draft_pass, 0.0),
                     target_overhead=0.0, draft_overhead=0.0)


def test_expected_tokens():
    assert expected_tokens(0.5, 0) == 1
    assert expected_tokens(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens(1.0, 4) == 5


def test_goodput_speculates_when_it_pays_and_not_when_it_does_not():
    cheap = SpeculationControl("goodput", 4, 8, costs(draft_pass=0.001))
    assert cheap.choose([request(alpha=0.8)], [True])[0] >= 3
    assert cheap.choose([request(alpha=0.0)], [True]) == [0]  # nothing would be accepted
    expensive = SpeculationControl("goodput", 4, 8, costs(draft_pass=0.050))
    assert expensive.choose([request(alpha=0.8)], [True]) == [0]  # a draft pass costs more than a target pass
    # a big batch makes verification dear: the best k shrinks
    assert cheap.choose([request(alpha=0.8)] * 64, [True] * 64)[0] < cheap.choose([request(alpha=0.8)], [True])[0]


def test_k_respects_caps_and_draft_availability():
    control = SpeculationControl("fixed", 4, 8, costs(0.001))
    assert control.choose([request(remaining=3), request(max_k=2), request(), request()], [True, True, True, False]) \
        == [2, 2, 4, 0]  # room for 3 tokens = 2 drafts + bonus; per-request cap; no draft replica
    assert SpeculationControl("none", 4, 8, costs(0.001)).choose([request()], [True]) == [0]
    assert SpeculationControl("off", 4, 8, costs(0.001)).mode == "none"  # the alias


def test_request_acceptance_starts_from_the_global_prior_then_learns():
    control = SpeculationControl("goodput", 4, 8, costs(draft_pass=0.001))
    hopeless = request(alpha=0.9)
    control.observe(hopeless, 4, 0)
    assert hopeless.acceptance.value > 0.5  # one bad iteration does not outweigh the prior yet
    for _ in range(20):
        control.observe(hopeless, 4, 0)
    assert hopeless.acceptance.value < 0.05
    assert control.choose([hopeless], [True]) == [0]


def test_acceptance_estimate_is_the_truncated_geometric_mle():
    a = AcceptanceEstimate()
    for _ in range(50):
        a.observe(3, 4)  # 3 accepted then one rejection: alpha = 3/4
    assert a.value == pytest.approx(0.75)
    b = AcceptanceEstimate()
    for _ in range(50):
        b.observe(4, 4)  # all accepted: no failure observed
    assert b.value == pytest.approx(1.0)


def test_linear_fit_recovers_a_line_and_forgets_old_costs():
    fit = LinearFit(0.0, 0.0)
    for tokens in [1, 5, 9, 2, 8, 4] * 5:
        fit.add(tokens, 0.004 + 0.001 * tokens)
    assert fit.base == pytest.approx(0.004, abs=1e-6) and fit.per_token == pytest.approx(0.001, abs=1e-6)
    for tokens in [1, 5, 9, 2, 8, 4] * 60:  # the machine got twice as slow
        fit.add(tokens, 2 * (0.004 + 0.001 * tokens))
    assert fit(5) == pytest.approx(0.018, rel=0.05)


def test_linear_fit_separates_context_from_tokens():
    """SmartSpec's cost model: pass time linear in tokens fed and in context read. A batch's context
    varies apart from its size, and the fit tells the two apart; a tokens-only fit (the control)
    cannot, and mispredicts a long-context batch."""
    rng = random.Random(0)
    fit, tokens_only = LinearFit(0.005, 0.0005), LinearFit(0.005, 0.0005)
    for _ in range(300):
        tokens, context = rng.choice([8, 16, 24]), rng.uniform(1_000, 20_000)
        seconds = 0.010 + 3e-5 * tokens + 2e-7 * context
        fit.add(tokens, seconds, context)
        tokens_only.add(tokens, seconds)
    assert (fit.base, fit.per_token, fit.per_context) == pytest.approx((0.010, 3e-5, 2e-7), rel=1e-3)
    truth = 0.010 + 3e-5 * 8 + 2e-7 * 20_000
    assert fit(8, 20_000) == pytest.approx(truth, rel=1e-3)
    assert abs(tokens_only(8) - truth) > 0.1 * truth


def test_linear_fit_keeps_what_the_data_do_not_vary():
    """One batch size and no context so far: the line is scaled through the one point seen."""
    fit = LinearFit(0.005, 0.0005)
    for _ in range(3000):
        fit.add(8, 0.010)
    assert fit(8) == pytest.approx(0.010, rel=1e-6) and fit.per_context == 0.0
    assert fit.base > 0 and fit.per_token > 0


def test_cost_model_learns_from_worker_measurements():
    model = CostModel()
    for tokens in [4, 8, 12, 16] * 20:
        model.observe_target(tokens, 0.010 + 0.002 * tokens, round_trip_s=0.010 + 0.002 * tokens + 0.001)
        model.observe_draft(4, 3, compute_s=3 * 0.0015, round_trip_s=3 * 0.0015 + 0.001)
    assert model.target_overhead == pytest.approx(0.001, rel=0.05)
    assert model.iteration([0, 0]) == pytest.approx(0.010 + 0.002 * 2 + 0.001, rel=0.05)
    assert model.iteration([3, 3]) > model.iteration([0, 0])


def test_goodput_gives_more_drafts_to_requests_that_get_them_accepted():
    control = SpeculationControl("goodput", 4, 8, costs(draft_pass=0.001))
    good, poor = request(alpha=0.95), request(alpha=0.2)
    k_good, k_poor = control.choose([good, poor], [True, True])
    assert k_good > k_poor
    assert control.typical_k == round((k_good + k_poor) / 2)


def test_the_pipeline_period_counts_only_what_the_other_lane_does_not_hide():
    """Two lanes on one target: A's drafting runs while the target verifies B, and the other way
    round. The target idles only when a lane's time off it outlasts the other's verify."""
    model = costs(draft_pass=0.002)
    verify, off = 0.010 + 0.0005 * 8, 3 * 0.002  # two requests drafting 3 each: 8 tokens verified
    assert model.parts(2)(6, 3) == pytest.approx((verify, off))
    assert model.iteration([3, 3]) == pytest.approx(verify + off)  # alone: one after the other
    assert model.iteration([3, 3], partner=(verify, off)) == pytest.approx(2 * verify)  # hidden both ways
    # B verifies for 5 ms only: A's 6 ms of drafting leaves the target idle for 1 ms
    assert model.iteration([3, 3], partner=(0.005, 0.001)) == pytest.approx(verify + 0.006)
    # B drafts for 20 ms: the target waits for it after verifying A
    assert model.iteration([3, 3], partner=(0.005, 0.020)) == pytest.approx(0.020 + 0.006)


def _in_flight(batch: list[Request], target: str = "t") -> list[Request]:
    for r in batch:
        r.target, r.in_flight = target, True
    return batch


def test_goodput_drafts_what_the_batch_in_flight_hides_and_no_more():
    """A draft pass costs 2 ms, a verify 10-15 ms. Alone, drafting delays the verify, so goodput
    drafts little; beside a batch in flight on the same target, drafting for as long as that
    batch's verify costs no target time, so goodput drafts more, but not past that verify (a
    longer draft would idle the target, which also delays the batch in flight)."""
    model = costs(draft_pass=0.002, target_per_token=0.0001)
    alone = max(SpeculationControl("goodput", 4, 8, model).choose(_in_flight([request(alpha=0.6)] * 4), [True] * 4))
    beside = {}
    for size in (1, 16):  # the batch in flight: its verify is 10 ms + 0.1 ms a token
        control = SpeculationControl("goodput", 4, 8, model)
        other = _in_flight([request(alpha=0.6) for _ in range(size)])
        other_k = control.choose(other, [True] * size)
        other_verify, _ = model.parts(size)(sum(other_k), max(other_k))
        beside[size] = max(control.choose(_in_flight([request(alpha=0.6) for _ in range(4)]), [True] * 4,
                                          overlapped=True))
        assert 0.002 * beside[size] <= other_verify, (size, beside, other_verify)  # hidden by the verify
    assert alone < min(beside.values()), (alone, beside)


def test_goodput_pairs_a_batch_with_the_one_in_flight_on_its_target():
    control = SpeculationControl("goodput", 4, 8, costs(draft_pass=0.002))
    first = _in_flight([request(alpha=0.6)] * 2)
    control.choose(first, [True] * 2)
    second = _in_flight([request(alpha=0.6)] * 2)
    assert control._partner(second)[0] is first[0]
    assert control._partner(first) is None  # a batch is not its own partner
    for r in first:
        r.in_flight = False  # its iteration is over
    assert control._partner(second) is None
    assert control._partner(_in_flight([request()], target="other")) is None


def test_the_overhead_leaves_out_queueing_behind_the_other_lane():
    """The round trip of a call that waited behind the other lane's call holds that wait, which the
    pipeline period predicts itself: the overhead is the queue-free floor (an average would count
    the wait twice), and it rises again when the network slows."""
    model = CostModel()
    for i in range(200):
        wait = 0.004 if i % 10 else 0.0  # nine calls in ten queued behind another
        model.observe_target(8, 0.010, round_trip_s=0.010 + 0.0003 + wait)
    assert model.target_overhead == pytest.approx(0.0003, abs=0.0002)
    # what a replay of the run matches (specd/sim/validate.py): the typical excess, waits included
    assert model.target_overhead_mean == pytest.approx(0.0003 + 0.9 * 0.004, abs=0.0006)
    for _ in range(300):
        model.observe_target(8, 0.010, round_trip_s=0.010 + 0.002)
    assert model.target_overhead == pytest.approx(0.002, rel=0.05)


def test_goodput_explores_when_speculation_looks_useless():
    control = SpeculationControl("goodput", 4, 8, costs(draft_pass=0.001))
    choices = [control.choose([request(alpha=0.0)], [True]) for _ in range(32)]
    assert choices.count([1]) == 2 and choices.count([0]) == 30  # one probe in 16
