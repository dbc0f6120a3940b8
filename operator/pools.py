"""The pools of a resource and who sets their replicas: the spec, or the autoscaler while it is on.

Autoscaling off (the default): the Deployments get `spec.target.replicas` (the scale
subresource: `kubectl scale`, an HPA) and `spec.draft.replicas`.

Autoscaling on: the operator owns both pools' replicas. Its decisions (`operator/scaling.py`, at
each poll of the router's figures) are recorded in `status.autoscaling` and the Deployments get
those; `spec.*.replicas` is then only the starting point, clamped to minReplicas..maxReplicas.
The decision is the operator's observation of demand, not the user's desire (as an HPA keeps its
desiredReplicas in its status): the spec says what the user wants, the bounds and aims.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from specd.operator.autoscaling import AutoscalingPolicy, PoolLimits


@dataclasses.dataclass(frozen=True)
class Replicas:
    target: int
    draft: int


def has_draft_pool(spec: dict[str, Any]) -> bool:
    return spec["draft"]["method"] == "model"


def policy(spec: dict[str, Any]) -> AutoscalingPolicy | None:
    """The autoscaling policy of a defaulted spec; None while autoscaling is off. Without a draft
    pool (the drafts come from inside the targets, or none) there is no draft pool to scale."""
    found = AutoscalingPolicy.from_spec(spec)
    if found is None or has_draft_pool(spec):
        return found
    return dataclasses.replace(found, draft=PoolLimits(0, 0))


def _clamp(value: int, limits: PoolLimits) -> int:
    return max(limits.min_replicas, min(limits.max_replicas, value))


def starting(spec: dict[str, Any], on: AutoscalingPolicy, status: dict[str, Any]) -> Replicas:
    """The replicas the pools have under `on` until its next decision: the last decision's
    (status.autoscaling, which outlives an operator restart), else the spec's, within the
    policy's current bounds."""
    recorded = status.get("autoscaling") or {}
    return Replicas(_clamp(recorded.get("targetReplicas", spec["target"]["replicas"]), on.target),
                    _clamp(recorded.get("draftReplicas", spec["draft"]["replicas"]), on.draft))


def desired(spec: dict[str, Any], status: dict[str, Any]) -> Replicas:
    """The replicas the target and draft Deployments get."""
    on = policy(spec)
    if on is None:
        return Replicas(spec["target"]["replicas"], spec["draft"]["replicas"])
    return starting(spec, on, status)
