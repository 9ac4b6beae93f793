"""Worker replica bounds of running RayClusters, which KubeRay does not update itself.

KubeRay leaves the worker groups' ``minReplicas``/``maxReplicas`` out of its cluster hash
(so that the autoscaler's replica changes do not roll the cluster) and so never applies a
change of them to a running RayCluster. The operator patches them on the clusters the
RayService's status names (active, pending).
"""

from __future__ import annotations

import logging
from typing import Any

from mmo_operator.diff import owned_by
from mmo_operator.events import Event, bounds_updated
from mmo_operator.kube import ApiFailure, Kube
from mmo_operator.model_state import ModelState
from mmo_operator.objects import Obj

log = logging.getLogger(__name__)
WorkerBounds = dict[str, tuple[Any, Any]]  # groupName -> (minReplicas, maxReplicas)


def worker_bounds(rayservice: Obj) -> WorkerBounds:
    """The worker groups' replica bounds in a RayService's ``rayClusterConfig``."""
    config = (rayservice.get("spec") or {}).get("rayClusterConfig") or {}
    return {
        g["groupName"]: (g.get("minReplicas"), g.get("maxReplicas"))
        for g in config.get("workerGroupSpecs") or []
        if g.get("groupName")
    }


def serving_clusters(rayservice: Obj | None) -> tuple[str, ...]:
    """The RayClusters a RayService's status names: the active one, then the pending one."""
    status = (rayservice or {}).get("status") or {}
    names: list[str] = []
    for part in ("activeServiceStatus", "pendingServiceStatus"):
        name = (status.get(part) or {}).get("rayClusterName")
        if name and name not in names:
            names.append(name)
    return tuple(names)


def bounds_patch(raycluster: Obj, bounds: WorkerBounds) -> list[Obj]:
    """JSON-patch ops setting each worker group's minReplicas/maxReplicas to ``bounds``
    (groups matched by groupName, each guarded by a ``test`` of its groupName at that
    index); ``replicas`` is the autoscaler's and is never touched. Empty: nothing differs."""
    ops: list[Obj] = []
    groups = (raycluster.get("spec") or {}).get("workerGroupSpecs") or []
    for i, group in enumerate(groups):
        want = bounds.get(group.get("groupName"))
        if want is None or (group.get("minReplicas"), group.get("maxReplicas")) == want:
            continue
        at = f"/spec/workerGroupSpecs/{i}"
        ops.append({"op": "test", "path": f"{at}/groupName", "value": group["groupName"]})
        ops.append({"op": "add", "path": f"{at}/minReplicas", "value": want[0]})
        ops.append({"op": "add", "path": f"{at}/maxReplicas", "value": want[1]})
    return ops


def sync_worker_bounds(kube: Kube, state: ModelState, desired: Obj, observed: Obj) -> list[Event]:
    """Patch the worker bounds of the RayClusters of ``observed`` (the RayService) to those
    of ``desired``. Each cluster is read once per change of the bounds or of the cluster
    names, and patched only when it differs. Best effort: a failure is logged and retried
    by the next reconcile; the rest of the reconcile goes on. Returns the events (one per
    patch)."""
    clusters = serving_clusters(observed)
    bounds = worker_bounds(desired)
    if not clusters or not bounds:
        return []
    memo = (clusters, tuple(sorted(bounds.items())))
    if state.bounds_synced == memo:
        return []
    ns = desired["metadata"]["namespace"]
    events: list[Event] = []
    try:
        if not kube.has_kind("ray.io/v1", "RayCluster"):
            return []
        for name in clusters:
            cluster = kube.get("ray.io/v1", "RayCluster", ns, name)
            if cluster is None:
                return events  # not created yet (or gone): look again next time
            if not owned_by(cluster, observed):
                log.warning("RayCluster %s/%s is not owned by its RayService", ns, name)
                continue
            ops = bounds_patch(cluster, bounds)
            if ops:
                kube.json_patch("ray.io/v1", "RayCluster", ns, name, ops)
                events.append(bounds_updated(name, bounds))
    except ApiFailure as e:
        log.warning(
            "could not sync the worker bounds of %s/%s: %s", ns, desired["metadata"]["name"], e
        )
        return events
    state.bounds_synced = memo
    return events
