"""Pure status computation: observed Deployments -> the resource's status and its transitions.

Conditions (Kubernetes API conventions, each with reason, message and observedGeneration):
  Ready        the service can serve: a target and a router replica are ready
  Progressing  a Deployment is still rolling out the latest spec
  Degraded     serving below the spec: the API server refused a child, a pool short of ready
               replicas once its rollout ended, a failed rollout, or the draft pool down (the
               router then decodes with k = 0)
  Autoscaling  the operator sets the pools' replicas (spec.autoscaling.enabled); reason: the
               autoscaler's latest (status.autoscaling, written by operator/scaling.py), or
               Disabled
"""

from __future__ import annotations

import dataclasses
from typing import Any

from specd.operator import names as n
from specd.operator import pools

READY, PROGRESSING, DEGRADED, AUTOSCALING = "Ready", "Progressing", "Degraded", "Autoscaling"
OWNED = ("the operator sets the target and draft replicas; spec.target.replicas (the scale "
         "subresource) and spec.draft.replicas are ignored while spec.autoscaling.enabled")


@dataclasses.dataclass(frozen=True)
class Transition:
    """A condition that changed status: worth a Kubernetes event."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return (self.type == READY and self.status != "True") or (
            self.type == DEGRADED and self.status == "True")


def role_counts(deployment: dict[str, Any] | None) -> dict[str, int]:
    status = (deployment or {}).get("status", {})
    counts = {"replicas": status.get("replicas", 0),
              "readyReplicas": status.get("readyReplicas", 0),
              "updatedReplicas": status.get("updatedReplicas", 0)}
    if deployment is not None:
        counts["desiredReplicas"] = deployment["spec"].get("replicas", 1)
    return counts


def rolling_out(deployment: dict[str, Any] | None) -> bool:
    """True until the Deployment controller has replaced every pod with the latest template."""
    if deployment is None:
        return True
    desired = deployment["spec"].get("replicas", 1)
    status = deployment.get("status", {})
    return (status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0)
            or status.get("updatedReplicas", 0) < desired
            or status.get("replicas", 0) > desired)


def rollout_failure(deployment: dict[str, Any] | None) -> str | None:
    """The Deployment controller's own verdict that a rollout failed, if any."""
    for cond in (deployment or {}).get("status", {}).get("conditions", []):
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded"
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return f"ReplicaFailure: {cond.get('message', '')}".strip(": ")
    return None


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message, "observedGeneration": generation}


def _autoscaling(spec: dict[str, Any], previous: dict[str, Any], generation: int
                 ) -> dict[str, Any]:
    if pools.policy(spec) is None:
        return _condition(AUTOSCALING, False, "Disabled",
                          "replicas follow spec.target.replicas (the scale subresource) and "
                          "spec.draft.replicas", generation)
    decision = previous.get("autoscaling") or {}  # none yet: the pools start from the spec's
    message = f"{OWNED}: {decision['message']}" if decision.get("message") else OWNED
    return _condition(AUTOSCALING, True, decision.get("reason", "Enabled"), message, generation)


def _conditions(wanted: dict[str, int], deployments: dict[str, dict[str, Any] | None],
                generation: int, apply_error: str | None) -> list[dict[str, Any]]:
    ready = {role: role_counts(d)["readyReplicas"] for role, d in deployments.items()}
    if wanted[n.TARGET] == 0:
        ready_cond = _condition(READY, False, "ScaledToZero", "target replicas is 0", generation)
    elif ready[n.TARGET] == 0:
        ready_cond = _condition(READY, False, "TargetUnavailable", "no target replica is ready",
                                generation)
    elif ready[n.ROUTER] == 0:
        ready_cond = _condition(READY, False, "RouterUnavailable", "no router replica is ready",
                                generation)
    else:
        ready_cond = _condition(READY, True, "Serving",
                                f"{ready[n.TARGET]} target and {ready[n.ROUTER]} router "
                                "replicas ready", generation)

    rolling = sorted(role for role, d in deployments.items() if rolling_out(d))
    progressing = _condition(PROGRESSING, bool(rolling),
                             "RollingOut" if rolling else "RolloutComplete",
                             f"rolling out: {', '.join(rolling)}" if rolling
                             else "every pool runs the latest spec", generation)

    # The first problem names the reason: the most actionable first.
    problems: list[tuple[str, str]] = [("ApplyFailed", apply_error)] if apply_error else []
    if (n.DRAFT in deployments and wanted[n.DRAFT] > 0 and ready[n.DRAFT] == 0
            and ready[n.TARGET] > 0 and n.DRAFT not in rolling):
        problems.append(("DraftUnavailable",
                         "no draft replica is ready: decoding without speculation"))
    for role, deployment in sorted(deployments.items()):
        failure = rollout_failure(deployment)
        if failure:
            problems.append(("RolloutFailed", f"{role}: {failure}"))
        elif role not in rolling and ready[role] < wanted[role]:
            problems.append(("ReplicasUnavailable",
                             f"{role}: {ready[role]}/{wanted[role]} ready"))
    degraded = _condition(DEGRADED, bool(problems),
                          problems[0][0] if problems else "AsExpected",
                          "; ".join(m for _, m in problems) if problems else "", generation)
    return [ready_cond, progressing, degraded]


def compute_status(*, name: str, namespace: str, generation: int, spec: dict[str, Any],
                   deployments: dict[str, dict[str, Any] | None],
                   previous: dict[str, Any], now: str, apply_error: str | None = None
                   ) -> tuple[dict[str, Any], list[Transition]]:
    """The operator-owned part of the status, and the conditions that changed.

    `spec` is defaulted; `deployments` maps each desired role to its observed Deployment
    (None when not found). Live speculation figures (acceptanceRate, ...) are left to `live.LiveFigures`.
    `apply_error`: the API server refused a child of this generation; the status then keeps
    the previous observedGeneration and reports Degraded/ApplyFailed.
    """
    replicas = pools.desired(spec, previous)
    wanted = {n.TARGET: replicas.target, n.ROUTER: spec["router"]["replicas"],
                     n.DRAFT: replicas.draft}
    conditions = _conditions(wanted, deployments, generation, apply_error)
    conditions.append(_autoscaling(spec, previous, generation))
    old = {c["type"]: c for c in previous.get("conditions", [])}
    transitions = []
    for cond in conditions:
        before = old.get(cond["type"])
        if before and before.get("status") == cond["status"]:
            cond["lastTransitionTime"] = before.get("lastTransitionTime", now)
        else:
            cond["lastTransitionTime"] = now
            if before or cond["status"] == "True":  # a first False is no news
                transitions.append(Transition(cond["type"], cond["status"], cond["reason"],
                                              cond["message"]))
    status: dict[str, Any] = {
        "observedGeneration": previous.get("observedGeneration") if apply_error else generation,
        "conditions": conditions,
        "endpoint": f"{n.child_name(name, n.ROUTER)}.{namespace}.svc:"
                    f"{spec['router']['service']['port']}",
    }
    for role in n.ROLES:  # None removes a pool that no longer exists (merge patch)
        status[role] = role_counts(deployments[role]) if role in deployments else None
    status[n.TARGET]["selector"] = n.selector_string(n.selector_labels(name, n.TARGET))
    if conditions[-1]["status"] == "False":
        status["autoscaling"] = None  # the last decision no longer holds (merge patch: removed)
    return status, transitions


def status_changed(previous: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether writing `new` would change anything it sets."""
    return any(previous.get(key) != value for key, value in new.items())
