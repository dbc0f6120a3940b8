"""Speculation-aware autoscaling of a SpecDecodingService's target and draft pools.

The decision function is pure: `Autoscaler.observe(figures)` takes one poll of the router's
live figures and returns the replica counts both pools should have, with the reason and the
figures that drove it. The operator (`operator/live.py`) polls, applies and reports; the
simulator's autoscaling benchmark (`specd bench autoscale`) calls the same class.

INTERFACE FIXED (2026-11-30): the dataclasses and signatures below are the contract between the
operator and the benchmark; the implementation of `Autoscaler.observe` is in progress.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class PoolLimits:
    min_replicas: int
    max_replicas: int


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
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Figures:
    """One poll of the router's live figures (`specd.v1.Specd/Stats`)."""

    at_s: float  # monotonic seconds of the poll
    queued: int
    running: int
    mean_ttft_s: float  # last minute; 0 while nothing finished
    speculating_fraction: float  # share of the last minute's request-iterations with k > 0
    drafted_tokens_per_s: float  # last minute
    draft_busy_fraction: float  # mean share of the last minute a live draft replica spent drafting
    live_targets: int
    live_drafts: int

    @classmethod
    def from_stats(cls, stats: Any, at_s: float) -> Figures:
        """From a `RouterStats` message."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Decision:
    target_replicas: int
    draft_replicas: int
    reason: str  # CamelCase, for the status condition and the event: Steady, TargetScaleUp, ...
    message: str  # the figures that drove it, for the event

    def changes(self, target_replicas: int, draft_replicas: int) -> bool:
        return (self.target_replicas, self.draft_replicas) != (target_replicas, draft_replicas)


class Autoscaler:
    """The decisions of one resource; keeps the recommendations of its stabilisation windows."""

    def __init__(self, policy: AutoscalingPolicy, target_replicas: int, draft_replicas: int) -> None:
        self.policy = policy
        self.target_replicas = target_replicas
        self.draft_replicas = draft_replicas

    def observe(self, figures: Figures) -> Decision:
        raise NotImplementedError
