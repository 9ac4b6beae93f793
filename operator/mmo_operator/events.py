"""The Kubernetes Events a reconcile posts about a model: what it did, in words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmo_operator.builders.common import CLUSTER_HASH_ANNOTATION
from mmo_operator.diff import annotation
from mmo_operator.objects import Obj


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def cluster_changes(child: Obj, observed: Obj | None) -> bool:
    """Applying the RayService ``child`` over ``observed`` needs a new Ray cluster (an
    ``observed`` without the cluster hash was not built by this operator: unknown)."""
    have = annotation(observed, CLUSTER_HASH_ANNOTATION)
    return have is not None and annotation(child, CLUSTER_HASH_ANNOTATION) != have


def applied(child: Obj, observed: Obj | None) -> Event:
    """The event for applying ``child`` over ``observed`` (None: it was created)."""
    kind, name = child["kind"], child["metadata"]["name"]
    if observed is None:
        return Event("Normal", "Created", f"created {kind} {name}")
    if kind == "RayService":
        if cluster_changes(child, observed):
            return Event(
                "Normal",
                "ClusterUpgrade",
                f"Ray cluster config of RayService {name} changed: KubeRay starts a "
                "new cluster (blue/green) and moves traffic when it is ready",
            )
        return Event(
            "Normal",
            "ServeConfigUpdated",
            f"serveConfigV2 of RayService {name} updated in place (same Ray cluster)",
        )
    return Event("Normal", "Updated", f"updated {kind} {name}")


def deleted(kind: str, name: str) -> Event:
    return Event("Normal", "Deleted", f"deleted {kind} {name}")


def recreating(name: str) -> Event:
    return Event(
        "Normal",
        "RecreatingCluster",
        f"cluster change with upgrade strategy Recreate: deleted RayService "
        f"{name}; a new one is created once it is gone",
    )


def bounds_updated(cluster: str, bounds: dict[str, tuple[Any, Any]]) -> Event:
    shown = ", ".join(f"{g} {lo}..{hi}" for g, (lo, hi) in sorted(bounds.items()))
    return Event(
        "Normal",
        "WorkerBoundsUpdated",
        f"worker replica bounds of RayCluster {cluster} set to {shown} (KubeRay "
        "does not apply them to a running cluster)",
    )


def collapse_created(events: list[Event]) -> list[Event]:
    """One "Created" event for all the children created in one reconcile (fewer writes)."""
    created = [e for e in events if e.reason == "Created"]
    if len(created) <= 1:
        return events
    what = ", ".join(e.message.removeprefix("created ") for e in created)
    rest = [e for e in events if e.reason != "Created"]
    return [Event("Normal", "Created", f"created {what}"), *rest]
