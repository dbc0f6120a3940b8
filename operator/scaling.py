"""The autoscaling loop: each poll of a router's figures feeds its resource's `Autoscaler`.

`live.LiveFigures` polls every Ready resource's router every `--stats-seconds` and hands the
figures here. One `Autoscaler` per resource lives in memory, keyed by uid, and is rebuilt when
the policy changes; it keeps the recommendations of the stabilisation windows, so those start
empty again after an operator restart, from the replicas recorded in the status (a restart delays
decisions by at most a window and changes no replica count by itself).

A decision that changes the pools' replicas, or gives a new reason, is written to
`status.autoscaling` (the operator is its only writer while autoscaling is on), then a
reconciliation pass follows: the Deployments get the new replicas (`pools.desired`) and the
`Autoscaling` condition the reason. Each change of replicas is also an event whose reason is the
decision's and whose message holds the figures that drove it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from specd.kube import Kube
from specd.operator import crd, pools
from specd.operator.autoscaling import Autoscaler, AutoscalingPolicy, Figures
from specd.operator.reconcile import Reconciler, utcnow

log = logging.getLogger(__name__)
# An autoscaler not fed for this long belongs to a deleted (or long unready) resource: dropped,
# it restarts from the status as after an operator restart.
FORGET_AFTER_S = 600.0


@dataclasses.dataclass
class _Kept:
    policy: AutoscalingPolicy
    autoscaler: Autoscaler
    fed_at_s: float


class Scaling:
    def __init__(self, kube: Kube, reconciler: Reconciler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.reconciler = reconciler
        self.clock = clock
        self._kept: dict[str, _Kept] = {}

    def _autoscaler(self, uid: str, policy: AutoscalingPolicy, spec: dict[str, Any],
                    status: dict[str, Any], now_s: float) -> Autoscaler:
        for stale in [k for k, kept in self._kept.items() if now_s - kept.fed_at_s > FORGET_AFTER_S]:
            del self._kept[stale]
        kept = self._kept.get(uid)
        if kept is None or kept.policy != policy:
            start = pools.starting(spec, policy, status)
            kept = _Kept(policy, Autoscaler(policy, start.target, start.draft), now_s)
            self._kept[uid] = kept
        kept.fed_at_s = now_s
        return kept.autoscaler

    async def observe(self, body: dict[str, Any], stats: Any | None) -> None:
        """One poll of `body`'s router: `stats` is its RouterStats, None when it did not answer
        (no figures, no decision)."""
        meta, spec = body["metadata"], crd.apply_defaults(body["spec"])
        status = body.get("status") or {}
        policy = pools.policy(spec)
        if policy is None:
            self._kept.pop(meta["uid"], None)
            return  # the reconciliation pass removes status.autoscaling
        if stats is None:
            return
        now_s = self.clock()
        autoscaler = self._autoscaler(meta["uid"], policy, spec, status, now_s)
        decision = autoscaler.observe(Figures.from_stats(stats, now_s))
        current = pools.starting(spec, policy, status)  # what the Deployments have
        recorded = status.get("autoscaling") or {}
        scales = decision.changes(current.target, current.draft)
        if not scales and (recorded.get("targetReplicas"), recorded.get("draftReplicas"),
                           recorded.get("reason")) == (current.target, current.draft,
                                                       decision.reason):
            return
        await self.kube.patch_status(crd.KIND, meta["namespace"], meta["name"], {"autoscaling": {
            "targetReplicas": decision.target_replicas, "draftReplicas": decision.draft_replicas,
            "reason": decision.reason, "message": decision.message,
            "lastScaleTime": utcnow() if scales else recorded.get("lastScaleTime")}})
        if scales:
            log.info("%s/%s: %s (target %d -> %d, draft %d -> %d): %s", meta["namespace"],
                     meta["name"], decision.reason, current.target, decision.target_replicas,
                     current.draft, decision.draft_replicas, decision.message)
            await self.kube.post_event(body, "Normal", decision.reason, decision.message)
        # a full pass applies the new replicas; a new reason alone needs the condition only
        await self.reconciler.run(meta["namespace"], meta["name"], full=scales)
