"""Who sets the pools' replicas: the spec while autoscaling is off, the autoscaler's recorded
decision (within the current bounds) while it is on."""

from __future__ import annotations

from typing import Any

from specd.operator import crd, pools
from specd.operator.pools import Replicas


def spec(replicas: int = 2, draft_replicas: int = 3, method: str = "model",
         **autoscaling: Any) -> dict[str, Any]:
    draft: dict[str, Any] = {"method": method, "replicas": draft_replicas}
    if method == "model":
        draft["model"] = {"uri": "/d"}
    return crd.apply_defaults({
        "target": {"model": {"uri": "/m"}, "replicas": replicas}, "draft": draft,
        "scheduling": {"speculation": {"mode": "goodput" if method != "none" else "none"}},
        "autoscaling": {"target": {"minReplicas": 1, "maxReplicas": 4},
                        "draft": {"minReplicas": 0, "maxReplicas": 2}, **autoscaling}})


def test_off_the_spec_sets_the_replicas_whatever_the_status_says() -> None:
    off = spec(replicas=0, draft_replicas=7)
    assert pools.policy(off) is None
    status = {"autoscaling": {"targetReplicas": 4, "draftReplicas": 1}}  # a stale decision
    assert pools.desired(off, status) == Replicas(0, 7)


def test_on_the_spec_is_the_start_clamped_then_the_recorded_decision() -> None:
    on = spec(replicas=9, draft_replicas=3, enabled=True)
    assert pools.desired(on, {}) == Replicas(4, 2)  # both clamped to maxReplicas
    assert pools.desired(spec(replicas=0, enabled=True), {}).target == 1  # to minReplicas
    decided = {"autoscaling": {"targetReplicas": 3, "draftReplicas": 0}}
    assert pools.desired(on, decided) == Replicas(3, 0)
    # bounds lowered after the decision: the Deployments follow the new bounds at once
    lowered = spec(enabled=True, target={"minReplicas": 1, "maxReplicas": 2})
    assert pools.desired(lowered, decided) == Replicas(2, 0)


def test_without_a_draft_pool_there_is_no_draft_to_scale() -> None:
    for method in ("none", "ngram"):
        on = spec(method=method, enabled=True)
        policy = pools.policy(on)
        assert policy is not None and (policy.draft.min_replicas, policy.draft.max_replicas) == (0, 0)
        assert pools.desired(on, {}).draft == 0
    assert pools.policy(spec(enabled=True)).draft.max_replicas == 2  # type: ignore[union-attr]
