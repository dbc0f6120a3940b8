"""The autoscaling decision function on recorded figure traces: steady, step up, step down,
oscillating, sustained k = 0, drafting demand, a draft per target, bounds; each with a control."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from specd import contract
from specd.operator.autoscaling import (
    IDLE_SPECULATION,
    Autoscaler,
    AutoscalingPolicy,
    Decision,
    Figures,
    PoolLimits,
)
from specd.proto.v1 import serving_pb2

POLL_S = 15.0
POLICY = AutoscalingPolicy(target=PoolLimits(1, 8), draft=PoolLimits(0, 8), queue_per_target=4.0, ttft_seconds=0.0,
                           draft_utilisation=0.6, scale_up_window_s=30.0, scale_down_window_s=300.0)
NO_DRAFTS = dataclasses.replace(POLICY, draft=PoolLimits(0, 0))  # the target rule's traces, drafts out of the way


@dataclasses.dataclass(frozen=True)
class Load:
    requests: int  # queued + running
    speculating: float = 0.8
    draft_demand: float = 0.5  # draft replicas' worth of drafting: busy share = demand / live drafts
    ttft_s: float = 0.0


def replay(scaler: Autoscaler, load_at: Callable[[float], Load], seconds: float) -> list[tuple[float, Decision]]:
    """Poll every POLL_S; the pools follow each decision at once (live = decided)."""
    decisions = []
    for i in range(int(seconds / POLL_S)):
        t = i * POLL_S
        load = load_at(t)
        drafts = scaler.draft_replicas
        figures = Figures(at_s=t, queued=load.requests // 2, running=load.requests - load.requests // 2,
                          mean_ttft_s=load.ttft_s, speculating_fraction=load.speculating,
                          drafted_tokens_per_s=1000.0 * load.speculating,
                          draft_busy_fraction=min(1.0, load.draft_demand / drafts) if drafts else 0.0,
                          live_targets=scaler.target_replicas, live_drafts=drafts)
        decisions.append((t, scaler.observe(figures)))
    return decisions


def changes(decisions: list[tuple[float, Decision]], start: tuple[int, int]) -> list[tuple[float, int, int]]:
    out, last = [], start
    for t, d in decisions:
        if d.changes(*last):
            out.append((t, d.target_replicas, d.draft_replicas))
            last = (d.target_replicas, d.draft_replicas)
    return out


def test_steady_noisy_load_changes_nothing_and_the_control_moves():
    noisy = [10, 12, 14, 11, 13, 12]  # 3.3-4.7 per target on 3 targets: within the tolerance or not held
    decisions = replay(Autoscaler(POLICY, 3, 3), lambda t: Load(noisy[int(t / POLL_S) % len(noisy)]), 3600)
    assert changes(decisions, (3, 3)) == []
    assert {d.reason for _, d in decisions} == {"Steady"}
    control = replay(Autoscaler(POLICY, 3, 3), lambda t: Load(24), 600)  # 8 per target: it must grow
    assert changes(control, (3, 3))[0][1] == 6


def test_step_up_grows_after_the_up_window_not_before():
    step_at = 300.0
    decisions = replay(Autoscaler(NO_DRAFTS, 2, 0), lambda t: Load(8 if t < step_at else 24), 900)
    [(when, targets, _)] = changes(decisions, (2, 0))
    assert targets == 6  # ceil(24 / 4)
    assert step_at + POLICY.scale_up_window_s <= when < step_at + POLICY.scale_up_window_s + POLL_S
    assert dict(decisions)[when].reason == "TargetScaleUp"
    assert "24 requests" in dict(decisions)[when].message


def test_step_down_shrinks_only_after_the_down_window():
    step_at = 300.0
    decisions = replay(Autoscaler(NO_DRAFTS, 6, 0), lambda t: Load(24 if t < step_at else 8), 1200)
    [(when, targets, _)] = changes(decisions, (6, 0))
    assert targets == 2
    assert step_at + POLICY.scale_down_window_s <= when < step_at + POLICY.scale_down_window_s + POLL_S
    assert dict(decisions)[when].reason == "TargetScaleDown"


def test_oscillating_load_does_not_flap():
    def oscillating(t: float) -> Load:
        return Load(24 if int(t // 60) % 2 else 8)  # a period of 2 minutes, inside the down window

    decisions = replay(Autoscaler(POLICY, 2, 2), oscillating, 3600)
    assert changes(decisions, (2, 2)) == [(90.0, 6, 6)]  # grows once (a draft per target with it), then holds
    no_windows = dataclasses.replace(POLICY, scale_up_window_s=0.0, scale_down_window_s=0.0)
    control = replay(Autoscaler(no_windows, 2, 2), oscillating, 3600)
    assert len(changes(control, (2, 2))) > 40  # without stabilisation it follows every swing


def test_sustained_k0_shrinks_drafts_to_the_minimum_and_the_control_keeps_them():
    # goodput chose k = 0 under load: only its exploration drafts (one batch in EXPLORE_EVERY)
    idle = replay(Autoscaler(POLICY, 4, 4), lambda t: Load(16, speculating=0.06, draft_demand=0.1), 900)
    [(when, targets, drafts)] = changes(idle, (4, 4))
    assert (targets, drafts) == (4, POLICY.draft.min_replicas)
    assert when >= POLICY.scale_down_window_s  # sustained for the whole down window
    assert dict(idle)[when].reason == "SpeculationIdle"
    busy = replay(Autoscaler(POLICY, 4, 4), lambda t: Load(16, speculating=0.8, draft_demand=2.4), 900)
    assert changes(busy, (4, 4)) == []  # drafting at 60% of 4 drafts: as aimed


def test_an_idle_pool_stays_empty_on_the_same_load_and_probes_when_load_falls():
    with_min = dataclasses.replace(POLICY, draft=PoolLimits(0, 8))

    def load_at(t: float) -> Load:
        return Load(16, speculating=0.05) if t < 1200 else Load(4, speculating=0.9, draft_demand=0.5)

    decisions = replay(Autoscaler(with_min, 4, 2), load_at, 1200)
    [(when, _, drafts)] = changes(decisions, (4, 2))  # shrunk once, then empty on the same load
    assert drafts == 0 and POLICY.scale_down_window_s <= when <= POLICY.scale_down_window_s + POLL_S
    later = replay(Autoscaler(with_min, 4, 2), load_at, 2400)
    probe = [c for c in changes(later, (4, 2)) if c[0] >= 1200]
    assert probe and probe[0][2] == 1 and dict(later)[probe[0][0]].reason.endswith("SpeculationProbe")


def test_high_acceptance_at_moderate_load_grows_the_drafts():
    # drafting needs 1.4 replicas' worth of time: one draft is saturated
    # one target on its queue aim; drafting needs 1.4 replicas' worth of time: one draft is saturated
    decisions = replay(Autoscaler(POLICY, 1, 1), lambda t: Load(4, speculating=0.95, draft_demand=1.4), 600)
    grown = changes(decisions, (1, 1))
    assert grown and grown[0][2] == 2 and grown[0][0] >= POLICY.scale_up_window_s
    assert decisions[-1][1].draft_replicas == 3  # 1.4 / 3 = 47% busy, within the aim; 2 were 70%
    assert dict(decisions)[grown[0][0]].reason == "DraftScaleUp"
    control = replay(Autoscaler(POLICY, 1, 1), lambda t: Load(4, speculating=0.95, draft_demand=0.6), 600)
    assert changes(control, (1, 1)) == []


def test_drafts_start_with_the_targets_while_speculation_pays():
    # the goodput control shortens drafts to what the pool proposes: they read 95% busy, near an aim of 0.9,
    # which alone would keep 2 drafts for 6 targets
    high_aim = dataclasses.replace(POLICY, draft_utilisation=0.9)
    step_at = 300.0

    def load_at(t: float) -> Load:
        return Load(8 if t < step_at else 24, speculating=0.9, draft_demand=0.95 * 2)

    decisions = replay(Autoscaler(high_aim, 2, 2), load_at, 900)
    [(when, targets, drafts)] = changes(decisions, (2, 2))
    assert (targets, drafts) == (6, 6) and when >= step_at + POLICY.scale_up_window_s
    assert dict(decisions)[when].reason == "TargetScaleUpAndDraftScaleUp"

    def idle_at(t: float) -> Load:  # the control: k = 0 under the same load, no draft per target
        return Load(8 if t < step_at else 24, speculating=0.05, draft_demand=0.1)

    idle = replay(Autoscaler(high_aim, 2, 2), idle_at, 900)
    assert idle[-1][1].target_replicas == 6 and idle[-1][1].draft_replicas == POLICY.draft.min_replicas


def test_ttft_objective_grows_the_targets_beyond_the_queue_figure():
    slo = dataclasses.replace(POLICY, ttft_seconds=1.0)
    decisions = replay(Autoscaler(slo, 2, 2), lambda t: Load(8, ttft_s=2.0), 300)
    assert changes(decisions, (2, 2))[0][1] == 4  # queue per target is on aim; TTFT is twice the objective
    control = replay(Autoscaler(POLICY, 2, 2), lambda t: Load(8, ttft_s=2.0), 300)  # no objective
    assert changes(control, (2, 2)) == []


@pytest.mark.parametrize("requests,expected", [(400, 8), (0, 1)])
def test_target_pool_is_clamped_to_its_bounds(requests, expected):
    decisions = replay(Autoscaler(POLICY, 4, 1), lambda t: Load(requests), 900)
    assert {d.target_replicas for _, d in decisions[-5:]} == {expected}
    assert all(POLICY.target.min_replicas <= d.target_replicas <= POLICY.target.max_replicas for _, d in decisions)


def test_draft_pool_is_clamped_and_an_out_of_bounds_start_is_corrected():
    decisions = replay(Autoscaler(POLICY, 2, 1), lambda t: Load(8, draft_demand=50.0), 900)
    assert decisions[-1][1].draft_replicas == POLICY.draft.max_replicas
    at_least_two = dataclasses.replace(POLICY, draft=PoolLimits(2, 3))
    first = Autoscaler(at_least_two, 2, 0).observe(Figures(0.0, 0, 8, 0.0, 0.9, 10.0, 0.0, 2, 0))
    assert first.draft_replicas == 2


def test_from_spec_off_is_none_and_on_reads_every_key_with_contract_defaults():
    assert AutoscalingPolicy.from_spec({}) is None
    assert AutoscalingPolicy.from_spec({"autoscaling": {"enabled": False, "target": {"maxReplicas": 9}}}) is None
    policy = AutoscalingPolicy.from_spec({"autoscaling": {
        "enabled": True, "scaleUpWindowSeconds": 10, "scaleDownWindowSeconds": 120,
        "target": {"minReplicas": 2, "maxReplicas": 9, "queuePerReplica": 6, "ttftSeconds": 1.5},
        "draft": {"minReplicas": 1, "maxReplicas": 5, "utilisation": 0.7}}})
    assert policy == AutoscalingPolicy(PoolLimits(2, 9), PoolLimits(1, 5), 6.0, 1.5, 0.7, 10.0, 120.0)
    defaults = AutoscalingPolicy.from_spec({"autoscaling": {"enabled": True}})
    assert defaults == AutoscalingPolicy(
        PoolLimits(contract.AUTOSCALE_TARGET_MIN_REPLICAS.default, contract.AUTOSCALE_TARGET_MAX_REPLICAS.default),
        PoolLimits(contract.AUTOSCALE_DRAFT_MIN_REPLICAS.default, contract.AUTOSCALE_DRAFT_MAX_REPLICAS.default),
        contract.AUTOSCALE_QUEUE_PER_TARGET.default, contract.AUTOSCALE_TTFT_SECONDS.default,
        contract.AUTOSCALE_DRAFT_UTILISATION.default, contract.AUTOSCALE_SCALE_UP_WINDOW_SECONDS.default,
        contract.AUTOSCALE_SCALE_DOWN_WINDOW_SECONDS.default)


def test_figures_from_a_router_stats_message():
    stats = serving_pb2.RouterStats(queued_requests=3, running_requests=5, mean_ttft_s=0.4, speculating_fraction=0.7,
                                    drafted_tokens_per_s=120.0, draft_busy_fraction=0.3, live_targets=2,
                                    live_drafts=1)
    assert Figures.from_stats(stats, at_s=7.0) == Figures(7.0, 3, 5, 0.4, 0.7, 120.0, 0.3, 2, 1)


def test_the_idle_threshold_is_above_the_goodput_controls_exploration():
    from specd.router.speculation import EXPLORE_EVERY

    assert 1 / EXPLORE_EVERY < IDLE_SPECULATION < 0.5
