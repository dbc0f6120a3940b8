"""Status computation from observed Deployments: conditions, counts, transitions."""

from __future__ import annotations

from specd.operator import crd, status

SPEC = crd.apply_defaults({"target": {"model": {"uri": "/m"}, "replicas": 2},
                           "draft": {"method": "model", "model": {"uri": "/d"}}})


def deployment(replicas: int, ready: int, updated: int | None = None, generation: int = 1,
               observed: int = 1, conditions: list | None = None) -> dict:
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas,
                       "readyReplicas": ready,
                       "updatedReplicas": replicas if updated is None else updated,
                       "conditions": conditions or []}}


def compute(deployments: dict, previous: dict | None = None, now: str = "T1"):
    return status.compute_status(name="svc", namespace="ns", generation=3, spec=SPEC,
                                 deployments=deployments, previous=previous or {}, now=now)


def conditions(st: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_all_pools_ready() -> None:
    st, transitions = compute({"target": deployment(2, 2), "draft": deployment(1, 1),
                               "router": deployment(1, 1)})
    assert conditions(st) == {"Ready": ("True", "Serving"),
                              "Progressing": ("False", "RolloutComplete"),
                              "Degraded": ("False", "AsExpected"),
                              "Autoscaling": ("False", "Disabled")}
    assert st["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == "T1"
               for c in st["conditions"])
    assert st["target"] == {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                            "desiredReplicas": 2,
                            "selector": "app.kubernetes.io/component=target,"
                                        "app.kubernetes.io/instance=svc,"
                                        "app.kubernetes.io/name=specd"}
    assert st["endpoint"] == "svc-router.ns.svc:50051"
    assert [t.type for t in transitions] == ["Ready"]  # a first False is no news


def test_missing_children_are_progressing_not_ready() -> None:
    st, _ = compute({"target": None, "draft": None, "router": None})
    assert conditions(st)["Ready"] == ("False", "TargetUnavailable")
    assert conditions(st)["Progressing"][0] == "True"
    assert st["target"]["readyReplicas"] == 0


def test_rollout_in_progress() -> None:
    st, _ = compute({"target": deployment(2, 2, updated=1), "draft": deployment(1, 1),
                     "router": deployment(1, 1, generation=2, observed=1)})
    assert conditions(st)["Progressing"] == ("True", "RollingOut")
    message = next(c["message"] for c in st["conditions"] if c["type"] == "Progressing")
    assert message == "rolling out: router, target"
    assert conditions(st)["Ready"][0] == "True"


def test_draft_pool_down_is_degraded_but_serving() -> None:
    st, transitions = compute({"target": deployment(2, 2), "draft": deployment(1, 0),
                               "router": deployment(1, 1)})
    assert conditions(st)["Ready"] == ("True", "Serving")
    assert conditions(st)["Degraded"] == ("True", "DraftUnavailable")
    assert any(t.type == "Degraded" and t.warning for t in transitions)


def test_failed_rollout_is_degraded() -> None:
    failed = deployment(2, 1, conditions=[{"type": "Progressing", "status": "False",
                                           "reason": "ProgressDeadlineExceeded"}])
    st, _ = compute({"target": failed, "draft": deployment(1, 1), "router": deployment(1, 1)})
    assert conditions(st)["Degraded"] == ("True", "RolloutFailed")


def test_scaled_to_zero() -> None:
    spec = crd.apply_defaults({"target": {"model": {"uri": "/m"}, "replicas": 0},
                               "draft": {"method": "none"}})
    st, _ = status.compute_status(name="svc", namespace="ns", generation=1, spec=spec,
                                  deployments={"target": deployment(0, 0),
                                               "router": deployment(1, 1)},
                                  previous={}, now="T")
    assert conditions(st)["Ready"] == ("False", "ScaledToZero")
    assert st["draft"] is None  # no draft pool: removed from the status by the merge patch


def test_transition_times_and_events_only_on_change() -> None:
    healthy = {"target": deployment(2, 2), "draft": deployment(1, 1), "router": deployment(1, 1)}
    first, _ = compute(healthy, now="T1")
    again, transitions = compute(healthy, previous=first, now="T2")
    assert transitions == []
    assert [c["lastTransitionTime"] for c in again["conditions"]] == ["T1"] * 4
    assert not status.status_changed(first, again)

    broken = {**healthy, "target": deployment(2, 0)}
    after, transitions = compute(broken, previous=first, now="T3")
    assert status.status_changed(first, after)
    ready = next(c for c in after["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"]) == ("False", "T3")
    assert [(t.type, t.status, t.warning) for t in transitions] == [
        ("Ready", "False", True), ("Degraded", "True", True)]


def test_live_figures_written_by_others_do_not_count_as_changes() -> None:
    healthy = {"target": deployment(2, 2), "draft": deployment(1, 1), "router": deployment(1, 1)}
    first, _ = compute(healthy)
    previous = {**first, "acceptanceRate": 0.7, "currentK": 4}
    again, _ = compute(healthy, previous=previous)
    assert not status.status_changed(previous, again)
    assert "acceptanceRate" not in again


def test_refused_apply_is_degraded_and_keeps_the_observed_generation() -> None:
    healthy = {"target": deployment(2, 2), "draft": deployment(1, 1), "router": deployment(1, 1)}
    before, _ = compute(healthy)  # generation 3 applied
    st, transitions = status.compute_status(
        name="svc", namespace="ns", generation=4, spec=SPEC, deployments=healthy,
        previous=before, now="T9", apply_error="422 Invalid: spec.template.spec.tolerations")
    assert conditions(st)["Degraded"] == ("True", "ApplyFailed")
    assert "tolerations" in next(c["message"] for c in st["conditions"]
                                 if c["type"] == "Degraded")
    assert st["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 4 for c in st["conditions"])
    assert [(t.type, t.reason) for t in transitions] == [("Degraded", "ApplyFailed")]


AUTOSCALED = crd.apply_defaults({
    "target": {"model": {"uri": "/m"}, "replicas": 2},
    "draft": {"method": "model", "model": {"uri": "/d"}, "replicas": 5},
    "autoscaling": {"enabled": True, "target": {"minReplicas": 1, "maxReplicas": 3},
                    "draft": {"minReplicas": 0, "maxReplicas": 2}}})


def test_autoscaling_owns_the_replicas_and_says_so() -> None:
    pools = {"target": deployment(2, 2), "draft": deployment(2, 2), "router": deployment(1, 1)}
    st, transitions = status.compute_status(name="svc", namespace="ns", generation=1,
                                            spec=AUTOSCALED, deployments=pools, previous={},
                                            now="T")
    cond = next(c for c in st["conditions"] if c["type"] == "Autoscaling")
    assert (cond["status"], cond["reason"]) == ("True", "Enabled")  # no decision yet
    assert "spec.target.replicas" in cond["message"] and "ignored" in cond["message"]
    # spec.draft.replicas (5) is clamped to maxReplicas (2): two ready drafts are as expected
    assert conditions(st)["Degraded"] == ("False", "AsExpected")
    assert ("Autoscaling", "True") in [(t.type, t.status) for t in transitions]
    assert "autoscaling" not in st  # written by the autoscaler only

    decided = {**st, "autoscaling": {"targetReplicas": 3, "draftReplicas": 0,
                                     "reason": "TargetScaleUp", "message": "queue 14 on 2"}}
    st, _ = status.compute_status(name="svc", namespace="ns", generation=1, spec=AUTOSCALED,
                                  deployments=pools, previous=decided, now="T2")
    cond = next(c for c in st["conditions"] if c["type"] == "Autoscaling")
    assert (cond["reason"], cond["lastTransitionTime"]) == ("TargetScaleUp", "T")
    assert cond["message"].endswith(": queue 14 on 2")
    assert conditions(st)["Degraded"] == ("True", "ReplicasUnavailable")  # 2 of 3 targets ready


def test_turning_autoscaling_off_removes_its_decision() -> None:
    decided = {"autoscaling": {"targetReplicas": 3, "draftReplicas": 0, "reason": "Steady"}}
    st, _ = compute({"target": deployment(2, 2), "draft": deployment(1, 1),
                     "router": deployment(1, 1)}, previous=decided)
    assert conditions(st)["Autoscaling"] == ("False", "Disabled")
    assert st["autoscaling"] is None and status.status_changed(decided, st)
    assert conditions(st)["Degraded"] == ("False", "AsExpected")  # spec's 2 targets, 1 draft
