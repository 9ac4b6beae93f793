"""What the operator remembers of each model between reconciles: one ``ModelState`` each.

Everything kept per model lives in one object, so that forgetting a deleted model is
one ``pop`` and no memory of it can be left behind.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from mmo_operator.objects import Obj
from mmo_operator.status import Observation, rebalance_figures
from mmo_serving.config import PlacementPlan

ChildKey = tuple[str, str, str]  # apiVersion, kind, name


@dataclass(frozen=True)
class Rebalance:
    """A plan the rebalance timer chose from observed load, with its figures."""

    plan: PlacementPlan
    balancedness_before: float
    moved_experts: int
    time: str


@dataclass
class ModelState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    observation: Observation | None = None  # of the last reconcile or refresh
    written: tuple[str | None, Obj] | None = None  # (uid, status) last written
    failed_generation: int | None = None  # a spec found invalid: not retried
    rebalance: Rebalance | None = None  # the last rebalance (its plan is in the ConfigMap)
    pending: tuple[Obj, Obj | None] | None = None  # a RayService report held for later
    # The RayClusters read and found (or patched) with the desired worker bounds, and
    # those bounds; while neither changes they are not read again.
    bounds_synced: tuple[tuple[str, ...], tuple[Any, ...]] | None = None
    # The children as last applied or listed: a reconcile after a partial failure
    # applies only what differs from them.
    children: dict[ChildKey, Obj] = field(default_factory=dict)
    status_stale: bool = False  # a RayService report whose status write failed
    # The RayService generation that carries the last cluster change (a new Ray cluster).
    cluster_change_generation: int | None = None
    body: Obj | None = None  # the latest model object seen
    # kopf's work on the model (time.monotonic()): its last event or handler, a handler
    # running now, and when it retries one that failed.
    kopf_active_at: float = 0.0
    kopf_handling: int = 0
    kopf_retry_at: float = 0.0


def model_key(body: Obj) -> str:
    meta = body["metadata"]
    return f"{meta.get('namespace')}/{meta['name']}"


def model_document(body: Obj) -> Obj:
    """The parts of an API object that validation reads (status and server fields left out)."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "generation", "labels", "annotations")
            if k in meta
        },
        "spec": body.get("spec"),
    }


class ModelStates:
    """The ``ModelState`` of every model, by NAMESPACE/NAME (thread-safe)."""

    def __init__(self) -> None:
        self._states: dict[str, ModelState] = {}
        self._guard = threading.Lock()
        self.pending_guard = threading.Lock()  # a model's lock state and its pending report

    def __call__(self, key: str) -> ModelState:
        with self._guard:
            return self._states.setdefault(key, ModelState())

    def peek(self, key: str) -> ModelState | None:
        with self._guard:
            return self._states.get(key)

    def names(self) -> list[str]:
        with self._guard:
            return list(self._states)

    def hold(self, key: str, report: tuple[Obj, Obj | None]) -> bool:
        """Keep a RayService ``report`` for the reconcile running for the model, if any."""
        state = self(key)
        with self.pending_guard:
            if not state.lock.locked():
                return False
            state.pending = report
            return True

    def take_or_release(self, state: ModelState) -> tuple[Obj, Obj | None] | None:
        """The report held for ``state``; none: the model's lock is released."""
        with self.pending_guard:
            late, state.pending = state.pending, None
            if late is None:
                state.lock.release()
            return late

    def forget(self, key: str) -> None:
        with self._guard:
            self._states.pop(key, None)


def carry_rebalance_figures(
    state: ModelState, status: Obj | None, obs: Observation, fresh: PlacementPlan
) -> None:
    """``status.placement``'s rebalance figures while the rebalanced plan is in force:
    from memory, or after an operator restart from the ``status`` written before."""
    plan, done, previous = obs.plan, state.rebalance, state.observation
    if done is not None and done.plan == plan:
        obs.balancedness_before = done.balancedness_before
        obs.moved_experts = done.moved_experts
        obs.last_rebalance_time = done.time
    elif previous is not None and previous.plan == plan:
        obs.balancedness_before = previous.balancedness_before
        obs.moved_experts = previous.moved_experts
        obs.last_rebalance_time = previous.last_rebalance_time
    elif plan is not None and plan != fresh:
        figures = rebalance_figures(status, plan)
        if figures is not None:
            obs.balancedness_before, obs.moved_experts, obs.last_rebalance_time = figures
