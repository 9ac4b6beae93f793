"""Status of a MultimodalModel, computed from what the operator observed (pure).

Six conditions, each with a reason and a message a person can act on:

- ``Planned``: the spec is valid, fits the GPUs, and has a placement plan;
- ``PolicyEnforced``: which isolation layers are active (admission, network, runtime,
  audit);
- ``Ready``: only what is observed of the serving side: the RayService's own ``Ready``
  condition and the Serve application's status (a failed write of the operator does not
  make a serving model unready);
- ``Reconciled``: every child is applied as the spec says; False with the API error
  while a write fails (retried);
- ``Progressing``: a change is on its way to the serving side: KubeRay has not acted on
  the RayService's latest generation (``status.observedGeneration``), or a new Ray
  cluster is starting (True from the moment the operator applies a cluster change until
  the new cluster serves);
- ``Degraded``: something works only in part (an unhealthy application, a PodMonitor
  that could not be created, an upgrade stuck for want of GPUs).

``lastTransitionTime`` changes only when a condition's status changes, so recomputing an
unchanged status gives the same dict (and the operator writes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_operator.builders.common import endpoint, placement_configmap_name, rayservice_name
from mmo_operator.builders.rayservice import IN_TREE_AUTOSCALING
from mmo_operator.planning.capacity import CapacityReport
from mmo_serving.config import PlacementPlan

Obj = dict[str, Any]

PLANNED, POLICY, READY, DEGRADED = "Planned", "PolicyEnforced", "Ready", "Degraded"
RECONCILED, PROGRESSING = "Reconciled", "Progressing"
CONDITION_TYPES = (READY, PLANNED, POLICY, DEGRADED, RECONCILED, PROGRESSING)

AUTOSCALER_CUT_OFF = (
    "the Ray autoscaler cannot reach the API server under default-deny, so workers do not "
    "scale between minReplicas and maxReplicas: run the operator with --apiserver-cidr "
    "(chart value networkPolicy.apiServerCIDRs)"
)

KUBERAY_MISSING = (
    "KubeRay CRDs not installed: the ray.io/v1 RayService resource is missing; install "
    "the KubeRay operator (v1.7 or later) and this model will be deployed"
)


@dataclass
class Observation:
    """What the operator learnt in one reconcile, the input of ``compute_status``."""

    generation: int | None = None
    problems: list[str] = field(default_factory=list)  # validation messages, field: message
    capacity: CapacityReport | None = None
    plan: PlacementPlan | None = None
    kuberay_installed: bool = True
    monitoring_installed: bool = True
    rayservice: Obj | None = None  # the observed RayService
    network_policies: int = 0  # NetworkPolicies applied for the model
    webhook: bool = True  # the admission webhook is served
    apiserver_egress: bool = False  # the head may reach the API server (--apiserver-cidr)
    egress_notes: list[str] = field(default_factory=list)  # what admission could not check
    apply_error: str | None = None  # an API error while applying children
    # The RayService generation that carries the last cluster change the operator applied.
    cluster_change_generation: int | None = None
    balancedness_before: float | None = None
    moved_experts: int = 0
    last_rebalance_time: str | None = None


def _condition(ctype: str, ok: bool, reason: str, message: str) -> Obj:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }


def _planned(model: MultimodalModel, obs: Observation) -> Obj:
    if obs.problems:
        msg = "invalid spec: " + "; ".join(obs.problems)
        cap = obs.capacity
        if cap is not None and not cap.fits and len(obs.problems) == 1:
            return _condition(PLANNED, False, "DoesNotFit", obs.problems[0])
        return _condition(PLANNED, False, "InvalidSpec", msg)
    if obs.plan is None or obs.capacity is None:
        return _condition(PLANNED, False, "Pending", "placement not computed yet")
    res = model.spec.resources
    plan = obs.plan
    gpus = f"{res.nodes_per_replica}×" if res.nodes_per_replica > 1 else ""
    msg = (
        f"fits on {gpus}{res.gpus_per_node}×{res.gpu_type} per replica; {plan.strategy} "
        f"placement, {plan.slots_per_gpu} expert slots per GPU, balancedness "
        f"{plan.balancedness:.3f}; plan in ConfigMap {placement_configmap_name(model)}"
    )
    return _condition(PLANNED, True, "Planned", msg)


def _policy(model: MultimodalModel, obs: Observation) -> Obj:
    iso = model.spec.isolation
    layers = []
    layers.append("admission (webhook)" if obs.webhook else "admission (operator only)")
    if obs.network_policies:
        layers.append(f"network ({obs.network_policies} NetworkPolicies)")
    layers.append("runtime gateway")
    if iso.audit.enabled:
        layers.append("audit")
    text = f"{iso.mode} mode enforced by: " + ", ".join(layers)
    if obs.problems:
        return _condition(
            POLICY, False, "InvalidSpec", "nothing is deployed while the spec is invalid"
        )
    if not obs.network_policies:
        return _condition(
            POLICY,
            False,
            "NetworkPoliciesMissing",
            text + "; no NetworkPolicy has been applied for this model yet, so the network "
            "layer is off",
        )
    if IN_TREE_AUTOSCALING and not obs.apiserver_egress:
        text += "; " + AUTOSCALER_CUT_OFF
    for note in obs.egress_notes:
        text += "; " + note
    if iso.mode == "private" and not iso.audit.enabled:
        return _condition(POLICY, True, "EnforcedWithoutAudit", text)
    return _condition(POLICY, True, "Enforced", text)


def _kuberay_ready(rs: Obj) -> Obj | None:
    for cond in (rs.get("status") or {}).get("conditions") or []:
        if cond.get("type") == READY:
            return dict(cond)
    return None


def _applications(rs: Obj) -> dict[str, Obj]:
    active = (rs.get("status") or {}).get("activeServiceStatus") or {}
    apps: dict[str, Obj] = active.get("applicationStatuses") or {}
    return apps


def _ready(model: MultimodalModel, obs: Observation) -> Obj:
    if obs.problems:
        return _condition(READY, False, "NotPlanned", "not deployed: the spec is not valid")
    if not obs.kuberay_installed:
        return _condition(READY, False, "KubeRayNotInstalled", KUBERAY_MISSING)
    rs = obs.rayservice
    name = rayservice_name(model)
    if rs is None:
        return _condition(READY, False, "Creating", f"RayService {name} is being created")
    cond = _kuberay_ready(rs)
    app = _applications(rs).get(model.name) or {}
    app_status = app.get("status")
    if cond is None:
        return _condition(
            READY, False, "RayServicePending", f"waiting for KubeRay to report on RayService {name}"
        )
    if cond.get("status") != "True":
        detail = cond.get("message") or cond.get("reason") or "not ready"
        return _condition(
            READY, False, "RayServiceNotReady", f"RayService {name} is not ready: {detail}"
        )
    if app_status != "RUNNING":
        detail = app.get("message") or ""
        shown = app_status or "not reported"
        return _condition(
            READY,
            False,
            "ApplicationNotRunning",
            f"Serve application {model.name} is {shown}" + (f": {detail}" if detail else ""),
        )
    return _condition(READY, True, "Serving", f"serving at {endpoint(model)}")


def _reconciled(obs: Observation) -> Obj:
    if obs.problems:
        return _condition(
            RECONCILED, False, "NotPlanned", "nothing is applied: the spec is not valid"
        )
    if obs.apply_error:
        return _condition(RECONCILED, False, "ApplyFailed", obs.apply_error)
    if not obs.kuberay_installed:
        return _condition(
            RECONCILED, False, "KubeRayNotInstalled", "every child but the RayService applied"
        )
    return _condition(
        RECONCILED, True, "Applied", f"every child applied as generation {obs.generation} says"
    )


def _generations(rs: Obj) -> tuple[int | None, int | None]:
    """(metadata.generation, status.observedGeneration) of a RayService."""
    generation = (rs.get("metadata") or {}).get("generation")
    observed = (rs.get("status") or {}).get("observedGeneration")
    return (
        generation if isinstance(generation, int) else None,
        observed if isinstance(observed, int) else None,
    )


def _upgrading(rs: Obj) -> bool:
    status = rs.get("status") or {}
    if (status.get("pendingServiceStatus") or {}).get("rayClusterName"):
        return True
    return any(
        c.get("type") == "UpgradeInProgress" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _progressing(model: MultimodalModel, obs: Observation) -> Obj:
    if obs.problems:
        return _condition(PROGRESSING, False, "NotPlanned", "the spec is not valid")
    rs = obs.rayservice
    name = rayservice_name(model)
    if rs is None:
        return _condition(PROGRESSING, True, "Creating", f"RayService {name} is being created")
    generation, observed = _generations(rs)
    change = obs.cluster_change_generation
    if (change is not None and (observed is None or observed < change)) or _upgrading(rs):
        return _condition(
            PROGRESSING,
            True,
            "ClusterUpgrade",
            f"the Ray cluster config of RayService {name} changed: a new Ray cluster starts "
            "and takes the traffic once it serves; until then the old cluster serves the "
            "previous spec",
        )
    if generation is not None and observed is not None and observed < generation:
        return _condition(
            PROGRESSING,
            True,
            "UpdatePending",
            f"KubeRay has not yet acted on generation {generation} of RayService {name} "
            f"(it reports generation {observed})",
        )
    shown = f" {observed}" if observed is not None else ""
    return _condition(
        PROGRESSING, False, "UpToDate", f"KubeRay acted on generation{shown} of RayService {name}"
    )


def _degraded(model: MultimodalModel, obs: Observation) -> Obj:
    reasons: list[tuple[str, str]] = []
    rs = obs.rayservice
    if rs is not None:
        app = _applications(rs).get(model.name) or {}
        if app.get("status") in ("UNHEALTHY", "DEPLOY_FAILED"):
            msg = app.get("message") or "see the Ray dashboard"
            reasons.append(("ApplicationUnhealthy", f"Serve application {app['status']}: {msg}"))
        for cond in (rs.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "UpgradeInProgress" and cond.get("status") == "True":
                gpus = model.spec.total_gpus
                reasons.append(
                    (
                        "UpgradeInProgress",
                        "a new Ray cluster is starting (blue/green upgrade: it needs "
                        f"{gpus} more GPUs until traffic moves to it); the old cluster "
                        "keeps serving",
                    )
                )
    if model.spec.monitoring.pod_monitor and not obs.monitoring_installed:
        reasons.append(
            (
                "PodMonitorSkipped",
                "PodMonitor not created: the monitoring.coreos.com/v1 PodMonitor CRD is "
                "not installed (install prometheus-operator, or set "
                "spec.monitoring.podMonitor: false)",
            )
        )
    if not reasons:
        return _condition(DEGRADED, False, "AsExpected", "nothing degraded")
    return _condition(DEGRADED, True, reasons[0][0], "; ".join(message for _, message in reasons))


def _with_times(new: list[Obj], old: list[Obj], now: str, generation: int | None) -> list[Obj]:
    previous = {c.get("type"): c for c in old}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        same = before is not None and before.get("status") == cond["status"]
        cond["lastTransitionTime"] = (
            before.get("lastTransitionTime", now) if same and before is not None else now
        )
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def compute_status(
    model: MultimodalModel, obs: Observation, *, previous: Obj | None = None, now: str
) -> Obj:
    """The whole ``status`` of a MultimodalModel (camelCase, as the CRD stores it)."""
    previous = previous or {}
    conditions = [
        _ready(model, obs),
        _planned(model, obs),
        _policy(model, obs),
        _degraded(model, obs),
        _reconciled(obs),
        _progressing(model, obs),
    ]
    status: Obj = {
        "observedGeneration": obs.generation,
        "conditions": _with_times(
            conditions, previous.get("conditions") or [], now, obs.generation
        ),
    }
    cap = obs.capacity
    if cap is not None:
        status["capacity"] = {
            "fits": cap.fits,
            "gpus": cap.gpus,
            "gpuMemoryBytes": cap.gpu_memory_bytes,
            "bytesPerGpu": cap.bytes_per_gpu,
            "denseBytes": cap.dense_bytes,
            "expertBytes": cap.expert_bytes,
            "expertSlotsPerGpu": cap.max_slots_per_gpu,
            "message": cap.message,
        }
    if obs.plan is not None:
        placement: Obj = {
            "strategy": obs.plan.strategy,
            "balancedness": round(obs.plan.balancedness, 4),
            "movedExperts": obs.moved_experts,
            "slotsPerGpu": obs.plan.slots_per_gpu,
            "configMap": placement_configmap_name(model),
        }
        if obs.balancedness_before is not None:
            placement["balancednessBefore"] = round(obs.balancedness_before, 4)
        if obs.last_rebalance_time is not None:
            placement["lastRebalanceTime"] = obs.last_rebalance_time
        status["placement"] = placement
    if not obs.problems and obs.kuberay_installed:
        status["endpoint"] = endpoint(model)
        status["rayService"] = rayservice_name(model)
    return status


def unparsed_status(obs: Observation, *, previous: Obj | None = None, now: str) -> Obj:
    """The status of a spec that does not even parse (a wrong type, an unknown field):
    nothing but the problems, each with its field path, in ``Planned``."""
    msg = "invalid spec: " + "; ".join(obs.problems)
    not_deployed = "not deployed: the spec is not valid"
    conditions = [
        _condition(READY, False, "NotPlanned", not_deployed),
        _condition(PLANNED, False, "InvalidSpec", msg),
        _condition(POLICY, False, "InvalidSpec", "nothing is deployed while the spec is invalid"),
        _condition(DEGRADED, False, "AsExpected", "nothing degraded"),
        _condition(RECONCILED, False, "NotPlanned", "nothing is applied: the spec is not valid"),
        _condition(PROGRESSING, False, "NotPlanned", "the spec is not valid"),
    ]
    return {
        "observedGeneration": obs.generation,
        "conditions": _with_times(
            conditions, (previous or {}).get("conditions") or [], now, obs.generation
        ),
    }


def rebalance_figures(
    status: Obj | None, plan: PlacementPlan
) -> tuple[float, int, str | None] | None:
    """(balancednessBefore, movedExperts, lastRebalanceTime) recorded in ``status`` for
    ``plan`` (its balancedness matches), so that they survive an operator restart."""
    placement = (status or {}).get("placement") or {}
    before = placement.get("balancednessBefore")
    if not isinstance(before, int | float) or isinstance(before, bool):
        return None
    if placement.get("balancedness") != round(plan.balancedness, 4):
        return None
    moved = placement.get("movedExperts")
    when = placement.get("lastRebalanceTime")
    return (
        float(before),
        moved if isinstance(moved, int) and not isinstance(moved, bool) else 0,
        when if isinstance(when, str) else None,
    )


def condition(status: Obj | None, ctype: str) -> Obj | None:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def is_ready(status: Obj | None) -> bool:
    cond = condition(status, READY)
    return bool(cond and cond.get("status") == "True")
