"""A model's children on the API server: list them, apply what differs, prune the rest."""

from __future__ import annotations

from mmo_operator import events
from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_operator.builders.common import MANAGER, MODEL_LABEL
from mmo_operator.builders.rayservice import upgrade_strategy
from mmo_operator.diff import needs_apply
from mmo_operator.events import Event
from mmo_operator.kube import Kube, KubeTemporaryError
from mmo_operator.model_state import ChildKey, ModelState
from mmo_operator.objects import Obj

RAYSERVICE = ("ray.io/v1", "RayService")
PODMONITOR = ("monitoring.coreos.com/v1", "PodMonitor")

# Kinds the operator may create for a model (pruned when no longer desired).
MANAGED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
    RAYSERVICE,
    PODMONITOR,
    ("apps/v1", "Deployment"),  # the Flower SuperNode, federated mode only
)
OPTIONAL_KINDS = {RAYSERVICE, PODMONITOR}


def child_key(obj: Obj) -> ChildKey:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def selector(name: str) -> str:
    return f"{MODEL_LABEL}={name},app.kubernetes.io/managed-by={MANAGER}"


def observe(kube: Kube, ns: str, name: str, kinds: list[tuple[str, str]]) -> dict[ChildKey, Obj]:
    seen: dict[ChildKey, Obj] = {}
    for api_version, kind in kinds:
        for obj in kube.list(api_version, kind, ns, selector(name)):
            seen[(api_version, kind, obj["metadata"]["name"])] = obj
    return seen


def apply_children(
    kube: Kube, model: MultimodalModel, desired: list[Obj], state: ModelState, done: list[Event]
) -> int:
    """Apply what differs from ``state.children`` (updated as each write lands, so a retry
    after a failure starts where this one stopped), prune the rest; returns the writes and
    adds an event for each to ``done``."""
    seen, writes = state.children, 0
    for child in desired:
        ckey = child_key(child)
        observed = seen.get(ckey)
        if child["kind"] == "RayService" and observed is not None:
            writes += recreate_if_needed(kube, model, child, observed, done)
        if not needs_apply(child, observed):
            continue
        applied = kube.apply(child)
        writes += 1
        seen[ckey] = applied
        if child["kind"] == "RayService" and events.cluster_changes(child, observed):
            state.cluster_change_generation = applied["metadata"].get("generation")
        done.append(events.applied(child, observed))
    wanted = {child_key(d) for d in desired}
    for ckey in [k for k in seen if k not in wanted]:
        kube.delete(ckey[0], ckey[1], model.namespace, ckey[2])
        writes += 1
        del seen[ckey]
        done.append(events.deleted(ckey[1], ckey[2]))
    done[:] = events.collapse_created(done)
    return writes


def recreate_if_needed(
    kube: Kube, model: MultimodalModel, child: Obj, observed: Obj, done: list[Event]
) -> int:
    """With the Recreate strategy, delete a RayService whose cluster must change (and
    wait for it to be gone: a temporary error)."""
    if upgrade_strategy(model) != "Recreate" or not events.cluster_changes(child, observed):
        return 0
    kube.delete(*RAYSERVICE, model.namespace, model.name)
    done.append(events.recreating(model.name))
    raise KubeTemporaryError(
        "waiting for the old RayService to be deleted", reason="Conflict", delay=2
    )


def delete_all(kube: Kube, ns: str, name: str) -> int:
    """Delete every child of the model; returns how many were deleted."""
    kinds = [k for k in MANAGED_KINDS if k not in OPTIONAL_KINDS or kube.has_kind(*k)]
    deleted = 0
    for api_version, kind in kinds:
        for obj in kube.list(api_version, kind, ns, selector(name)):
            deleted += kube.delete(api_version, kind, ns, obj["metadata"]["name"])
    return deleted
