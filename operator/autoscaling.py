"""Speculation-aware autoscaling of a SpecDecodingService's target and draft pools.

The decision function is pure: `Autoscaler.observe(figures)` takes one poll of the router's
live figures and returns the replica counts both pools should have, with the reason and the
figures that drove it. The operator (`operator/scaling.py`) polls, applies and reports; the
simulator's autoscaling benchmark (`specd bench autoscale`) calls the same class.

The rules are the Kubernetes HPA's (docs/autoscaling.md): per pool and metric, desired =
ceil(live replicas × metric / aim), kept at the current count while the ratio is within
TOLERANCE of 1, clamped to the pool's bounds; then stabilised: a pool grows to the lowest
recommendation of the scale-up window and shrinks to the highest of the scale-down window, so
a recommendation must hold for a whole window before it is applied.

- target pool: requests in the router (queued + running) per live target against
  queuePerReplica, and, with a TTFT objective, the last minute's mean TTFT against it (the
  larger recommendation wins);
- draft pool: sustained k = 0 (the goodput control found drafting does not pay) shrinks it to
  its minimum; otherwise one draft per target at least (a new target's draft starts with it), and
  more when the drafts' busy share exceeds the utilisation aimed for.
  A pool at zero drafts cannot show whether speculation would pay again: it gets one draft
  back (a probe) when the load per target has fallen to PROBE_LOAD_FRACTION of the load at
  which speculation was last idle (or was never seen idle).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any

from specd import contract

TOLERANCE = 0.1  # the HPA's default: ratios within 10% of 1 change nothing
# speculating_fraction below this reads as "goodput chose k = 0": while it does, the goodput control
# still drafts one token every 16th batch (router/speculation.py EXPLORE_EVERY), about 0.06
IDLE_SPECULATION = 0.1
PROBE_LOAD_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class PoolLimits:
    min_replicas: int
    max_replicas: int

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclasses.dataclass(frozen=True)
class AutoscalingPolicy:
    """`spec.autoscaling` of a defaulted spec (bounds and defaults: specd.contract AUTOSCALE_*)."""

    target: PoolLimits
    draft: PoolLimits
    queue_per_target: float  # requests in the router (queued + running) per target replica
    ttft_seconds: float  # mean time to first token above which the target pool grows; 0: none
    draft_utilisation: float  # share of its time a draft replica spends drafting, aimed for
    scale_up_window_s: float
    scale_down_window_s: float

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> AutoscalingPolicy | None:
        """The policy of a defaulted spec (`crd.apply_defaults`); None while autoscaling is off."""
        block = spec.get("autoscaling") or {}
        if not block.get("enabled", False):
            return None
        target, draft = block.get("target") or {}, block.get("draft") or {}
        c = contract
        return cls(
            target=PoolLimits(int(target.get("minReplicas", c.AUTOSCALE_TARGET_MIN_REPLICAS.default)),
                              int(target.get("maxReplicas", c.AUTOSCALE_TARGET_MAX_REPLICAS.default))),
            draft=PoolLimits(int(draft.get("minReplicas", c.AUTOSCALE_DRAFT_MIN_REPLICAS.default)),
                             int(draft.get("maxReplicas", c.AUTOSCALE_DRAFT_MAX_REPLICAS.default))),
            queue_per_target=float(target.get("queuePerReplica", c.AUTOSCALE_QUEUE_PER_TARGET.default)),
            ttft_seconds=float(target.get("ttftSeconds", c.AUTOSCALE_TTFT_SECONDS.default)),
            draft_utilisation=float(draft.get("utilisation", c.AUTOSCALE_DRAFT_UTILISATION.default)),
            scale_up_window_s=float(block.get("scaleUpWindowSeconds", c.AUTOSCALE_SCALE_UP_WINDOW_SECONDS.default)),
            scale_down_window_s=float(block.get("scaleDownWindowSeconds",
                                                c.AUTOSCALE_SCALE_DOWN_WINDOW_SECONDS.default)))


@dataclasses.dataclass(frozen=True)
class Figures:
    """One poll of the router's live figures (`specd.v1.Specd/Stats`)."""

    at_s: float  # monotonic seconds of the poll
    queued: int
    running: int
    mean_ttft_s: float  # last minute's first tokens; 0 while none came
    speculating_fraction: float  # share of the last minute's request-iterations with k > 0
    drafted_tokens_per_s: float  # last minute
    draft_busy_fraction: float  # mean share of the last minute a live draft replica spent drafting
    live_targets: int
    live_drafts: int

    @classmethod
    def from_stats(cls, stats: Any, at_s: float) -> Figures:
        """From a `RouterStats` message."""
        return cls(at_s=at_s, queued=stats.queued_requests, running=stats.running_requests,
                   mean_ttft_s=stats.mean_ttft_s, speculating_fraction=stats.speculating_fraction,
                   drafted_tokens_per_s=stats.drafted_tokens_per_s, draft_busy_fraction=stats.draft_busy_fraction,
                   live_targets=stats.live_targets, live_drafts=stats.live_drafts)

    @property
    def load(self) -> int:
        return self.queued + self.running


@dataclasses.dataclass(frozen=True)
class Decision:
    target_replicas: int
    draft_replicas: int
    reason: str  # CamelCase, for the status condition and the event: Steady, TargetScaleUp, ...
    message: str  # the figures that drove it, for the event

    def changes(self, target_replicas: int, draft_replicas: int) -> bool:
        return (self.target_replicas, self.draft_replicas) != (target_replicas, draft_replicas)


def proportional(live: int, ratio: float, current: int) -> int:
    """The HPA's rule: ceil(live × ratio), or `current` while the ratio is within the tolerance."""
    return current if abs(ratio - 1.0) <= TOLERANCE else math.ceil(live * ratio)


class Recommendations:
    """A pool's recent recommendations (seconds, replicas) and the stabilised count."""

    def __init__(self) -> None:
        self._recent: deque[tuple[float, int]] = deque()

    def stabilise(self, at_s: float, recommended: int, current: int, up_s: float, down_s: float) -> int:
        """Grow to the lowest recommendation of the last `up_s` seconds, shrink to the highest of
        the last `down_s`; else keep `current`. The windows open at the first poll with `current`
        in them: a new autoscaler (a restarted operator) waits a window like any other."""
        if not self._recent:
            self._recent.append((at_s, current))
        self._recent.append((at_s, recommended))
        while self._recent[0][0] < at_s - max(up_s, down_s):
            self._recent.popleft()
        up = min(r for t, r in self._recent if t >= at_s - up_s)
        down = max(r for t, r in self._recent if t >= at_s - down_s)
        return up if current < up else down if current > down else current


class Autoscaler:
    """The decisions of one resource; keeps the recommendations of its stabilisation windows."""

    def __init__(self, policy: AutoscalingPolicy, target_replicas: int, draft_replicas: int) -> None:
        self.policy = policy
        self.target_replicas = target_replicas
        self.draft_replicas = draft_replicas
        self._targets = Recommendations()
        self._drafts = Recommendations()
        self._idle_load: float | None = None  # requests per target when speculation was last idle

    def observe(self, figures: Figures) -> Decision:
        p, f = self.policy, figures
        target_rec, target_why = self._recommend_targets(f)
        draft_rec, draft_why, per_target = self._recommend_drafts(f)
        target = p.target.clamp(self._targets.stabilise(f.at_s, p.target.clamp(target_rec), self.target_replicas,
                                                        p.scale_up_window_s, p.scale_down_window_s))
        draft = p.draft.clamp(self._drafts.stabilise(f.at_s, p.draft.clamp(draft_rec), self.draft_replicas,
                                                     p.scale_up_window_s, p.scale_down_window_s))
        if per_target:  # a target's draft starts with it (the target's own windows already held the count)
            draft = p.draft.clamp(max(draft, target))
        reasons = []
        if target != self.target_replicas:
            reasons.append("TargetScaleUp" if target > self.target_replicas else "TargetScaleDown")
        if draft != self.draft_replicas:
            reasons.append(draft_why if draft_why else "DraftScaleUp" if draft > self.draft_replicas
                           else "DraftScaleDown")
        message = (f"{self._target_figures(f)}; {self._draft_figures(f)}; recommended target {target_rec} "
                   f"({target_why}), draft {draft_rec}; target {self.target_replicas} -> {target}, "
                   f"draft {self.draft_replicas} -> {draft}")
        self.target_replicas, self.draft_replicas = target, draft
        return Decision(target, draft, "And".join(reasons) or "Steady", message)

    # -- the recommendations, before stabilisation ----------------------------------------------

    def _recommend_targets(self, f: Figures) -> tuple[int, str]:
        p, current = self.policy, self.target_replicas
        if not f.live_targets:
            return current, "no live target yet"
        by_queue = proportional(f.live_targets, f.load / f.live_targets / p.queue_per_target, current)
        if p.ttft_seconds > 0 and f.mean_ttft_s > 0:
            by_ttft = proportional(f.live_targets, f.mean_ttft_s / p.ttft_seconds, current)
            if by_ttft > by_queue:
                return by_ttft, "TTFT"
        return by_queue, "queue"

    def _recommend_drafts(self, f: Figures) -> tuple[int, str, bool]:
        """(replicas, the reason when it is not plain utilisation: SpeculationIdle, SpeculationProbe;
        whether the pool keeps a draft per target, as it does while speculation pays)."""
        p, current = self.policy, self.draft_replicas
        if not f.live_targets or (not f.live_drafts and current > 0):
            return current, "", False  # replicas starting: nothing to judge yet
        per_target = f.load / f.live_targets
        if not f.live_drafts:  # a pool at zero: probe when the load fell well below where k = 0 won
            if f.load and (self._idle_load is None or per_target < PROBE_LOAD_FRACTION * self._idle_load):
                return max(1, p.draft.min_replicas), "SpeculationProbe", False
            return p.draft.min_replicas, "", False
        if f.speculating_fraction < IDLE_SPECULATION:
            if f.load or f.speculating_fraction:  # k = 0 under load (without any load: nothing to learn)
                self._idle_load = per_target
            return p.draft.min_replicas, "SpeculationIdle", False
        # While speculation pays, every target gets a draft at least: the goodput control shortens the
        # drafts to what the pool can propose, so a draft shared by two targets' pipelines reads about as
        # busy as one with a target of its own (both near 1) although it starves them (docs/autoscaling.md)
        ratio = f.draft_busy_fraction / p.draft_utilisation
        return max(f.live_targets, proportional(f.live_drafts, ratio, current)), "", True

    # -- the figures of a decision's message ----------------------------------------------------

    def _target_figures(self, f: Figures) -> str:
        p = self.policy
        per = f"{f.load / f.live_targets:.1f}" if f.live_targets else "-"
        text = (f"{f.load} requests ({f.queued} queued, {f.running} running) on {f.live_targets} live targets: "
                f"{per} per target (aim {p.queue_per_target:g})")
        if p.ttft_seconds > 0:
            text += f", mean TTFT {f.mean_ttft_s:.2f}s (aim {p.ttft_seconds:g}s)"
        return text

    def _draft_figures(self, f: Figures) -> str:
        return (f"{f.speculating_fraction:.0%} of iterations drafted, {f.drafted_tokens_per_s:.0f} draft tokens/s, "
                f"{f.live_drafts} live drafts {f.draft_busy_fraction:.0%} busy "
                f"(aim {self.policy.draft_utilisation:.0%})")
