"""One reconcile of a MultimodalModel: validate -> plan -> build -> apply -> observe -> status.

Called by every kopf handler and timer (in a worker thread: the kubernetes client is
synchronous). Idempotent: a child is applied only when what the API server holds differs
from what the builders produce (the ``spec-hash`` annotation, and every desired field
present with the same value), and the status only when it changed, so reconciling an
unchanged object writes nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from mmo_operator.api.problems import InvalidResource
from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_operator.api.validation import (
    Validated,
    capacity_of,
    parse_model,
    resolve_architecture,
    validate,
)
from mmo_operator.builders import build_children
from mmo_operator.builders.app_args import build_app_args
from mmo_operator.builders.common import (
    CLUSTER_HASH_ANNOTATION,
    HASH_ANNOTATION,
    MANAGER,
    MODEL_LABEL,
    placement_configmap_name,
)
from mmo_operator.builders.configmap import PLACEMENT_KEY
from mmo_operator.builders.rayservice import upgrade_strategy
from mmo_operator.kube import (
    ApiFailure,
    Kube,
    KubePermanentError,
    KubeTemporaryError,
    to_kopf_error,
)
from mmo_operator.planning import plan_for_model
from mmo_operator.status import Observation, compute_status, rebalance_figures
from mmo_serving.config import PlacementPlan

log = logging.getLogger(__name__)
Obj = dict[str, Any]

# Kinds the operator may create for a model (pruned when no longer desired).
MANAGED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("policy/v1", "PodDisruptionBudget"),
    ("ray.io/v1", "RayService"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("apps/v1", "Deployment"),  # the Flower SuperNode, federated mode only
)
OPTIONAL_KINDS = {("ray.io/v1", "RayService"), ("monitoring.coreos.com/v1", "PodMonitor")}


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Rebalance:
    """A plan the rebalance timer chose from observed load, with its figures."""

    plan: PlacementPlan
    balancedness_before: float
    moved_experts: int
    time: str


@dataclass
class Outcome:
    status: Obj
    writes: int = 0
    events: list[Event] = field(default_factory=list)
    ready: bool = False
    observation: Observation | None = None
    latency_target_s: float | None = None  # spec.autoscaling.latencyTargetMs, for alerts


# ---------------------------------------------------------------------- pure helpers


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def contains(desired: Any, observed: Any) -> bool:
    """Every field of ``desired`` is in ``observed`` with the same value (defaults and
    fields other managers own may be extra in ``observed``). An empty list or map may be
    missing: the API server leaves out empty fields (``omitempty``) when it answers."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(
            contains(v, observed[k]) if k in observed else v in ([], {}) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(desired) == len(observed)
            and all(contains(d, o) for d, o in zip(desired, observed, strict=True))
        )
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return float(desired) == float(observed)
    return bool(desired == observed)


def needs_apply(desired: Obj, observed: Obj | None) -> bool:
    if observed is None:
        return True
    want = desired["metadata"].get("annotations", {}).get(HASH_ANNOTATION)
    have = (observed.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
    return want != have or not contains(desired, observed)


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


def current_plan(configmap: Obj | None, fresh: PlacementPlan) -> PlacementPlan:
    """Keep the plan in the ConfigMap (a rebalance may have changed it) while it still
    matches the spec's shape; otherwise the freshly computed one."""
    if not configmap:
        return fresh
    raw = (configmap.get("data") or {}).get(PLACEMENT_KEY)
    try:
        plan = PlacementPlan.model_validate(json.loads(raw)) if raw else None
    except ValueError:
        return fresh
    if plan is None:
        return fresh
    return plan if same_shape(plan, fresh) else fresh


def same_shape(plan: PlacementPlan, fresh: PlacementPlan) -> bool:
    """``plan`` still fits the spec that ``fresh`` was planned from."""
    return (
        plan.strategy == fresh.strategy
        and plan.num_gpus == fresh.num_gpus
        and plan.num_nodes == fresh.num_nodes
        and plan.slots_per_gpu == fresh.slots_per_gpu
        and plan.num_experts == fresh.num_experts
        and plan.redundant_experts == fresh.redundant_experts
        and len(plan.layers) == len(fresh.layers)
    )


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


def owned_by(obj: Obj, owner: Obj) -> bool:
    uid = (owner.get("metadata") or {}).get("uid")
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("uid") == uid for r in refs)


def _describe(kind: str, name: str) -> str:
    return f"{kind} {name}"


def _collapse_created(events: list[Event]) -> list[Event]:
    """One "Created" event for all the children created in one reconcile (fewer writes)."""
    created = [e for e in events if e.reason == "Created"]
    if len(created) <= 1:
        return events
    what = ", ".join(e.message.removeprefix("created ") for e in created)
    rest = [e for e in events if e.reason != "Created"]
    return [Event("Normal", "Created", f"created {what}"), *rest]


# ---------------------------------------------------------------------- the reconcile


class Reconciler:
    """Holds the API client and per-model state shared by handlers, timers and events."""

    def __init__(
        self, kube: Kube, *, webhook: bool = True, apiserver_cidrs: tuple[str, ...] = ()
    ) -> None:
        self.kube = kube
        self.webhook = webhook
        # The API server's addresses: the head's Ray autoscaler may reach them (NetworkPolicy).
        self.apiserver_cidrs = apiserver_cidrs
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.observations: dict[str, Observation] = {}
        # The last status written for each model (and its uid).
        self.written: dict[str, tuple[str | None, Obj]] = {}
        self.failed_generation: dict[str, int] = {}
        # The last rebalance of each model (its plan stays in the placement ConfigMap).
        self.rebalances: dict[str, Rebalance] = {}
        # RayService observations that arrived while the model was being reconciled.
        self.pending: dict[str, tuple[Obj, Obj | None]] = {}
        self._pending_guard = threading.Lock()
        # Per model: the RayClusters read and found (or patched) with the desired worker
        # bounds, and those bounds; while neither changes they are not read again.
        self.bounds_synced: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {}

    def lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    # -- observe

    def _observe(self, ns: str, name: str, kinds: list[tuple[str, str]]) -> dict[tuple, Obj]:
        selector = f"{MODEL_LABEL}={name},app.kubernetes.io/managed-by={MANAGER}"
        seen: dict[tuple, Obj] = {}
        for api_version, kind in kinds:
            for obj in self.kube.list(api_version, kind, ns, selector):
                seen[(api_version, kind, obj["metadata"]["name"])] = obj
        return seen

    # -- main entry

    def reconcile(self, body: Obj, *, rebalance: Rebalance | None = None) -> Outcome:
        """``rebalance``: deploy its plan (written to the placement ConfigMap and the
        serveConfigV2 user_config, in place) instead of the one in the ConfigMap."""
        meta = body["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        lock = self.lock(key)
        lock.acquire()
        try:
            return self._reconcile(body, key, rebalance)
        finally:
            self._drain_and_release(key, lock)

    def _drain_and_release(self, key: str, lock: threading.Lock) -> None:
        """Apply the RayService reports that arrived meanwhile, then release the model."""
        while True:
            with self._pending_guard:
                late = self.pending.pop(key, None)
                if late is None:
                    lock.release()
                    return
            try:
                self._refresh(late[0], late[1], key)
            except ApiFailure as e:
                log.warning("status refresh of %s failed: %s", key, e)

    def refresh_soon(self, body: Obj, rayservice: Obj | None) -> bool:
        """Hand a RayService report to the reconcile running for its model, if any."""
        meta = body["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        lock = self.lock(key)
        with self._pending_guard:
            if not lock.locked():
                return False
            self.pending[key] = (body, rayservice)
            return True

    def _reconcile(self, body: Obj, key: str, rebalance: Rebalance | None = None) -> Outcome:
        meta = body["metadata"]
        obs = Observation(
            generation=meta.get("generation"),
            webhook=self.webhook,
            apiserver_egress=bool(self.apiserver_cidrs),
        )
        outcome = Outcome(status={}, observation=obs)
        if meta.get("deletionTimestamp"):
            return outcome  # being deleted: cleanup() owns it now
        doc = model_document(body)
        model: MultimodalModel | None = None
        try:
            try:
                validated = validate(doc)
            except InvalidResource as e:
                return self._invalid(body, doc, e, obs, outcome)
            self.failed_generation.pop(key, None)
            model = validated.model
            return self._deploy(body, model, validated, obs, outcome, rebalance)
        except (KubeTemporaryError, KubePermanentError) as e:
            e.events = list(outcome.events)
            raise
        except ApiFailure as e:
            err = to_kopf_error(e, f"reconciling {key}")
            # Shown in status (a 409 is only a race, retried at once): a denied or
            # throttled write must not leave a stale or empty status behind.
            if model is not None and e.status != 409:
                permanent = isinstance(err, KubePermanentError)
                obs.apply_error = str(err) if permanent else f"{err} (retrying)"
                try:
                    self._write_status(body, model, obs, outcome)
                except ApiFailure:
                    log.warning("could not record the error in the status of %s", key)
            raise err from e

    def _invalid(
        self, body: Obj, doc: Obj, err: InvalidResource, obs: Observation, outcome: Outcome
    ) -> Outcome:
        obs.problems = [str(p) for p in err.problems]
        reason = "InvalidSpec"
        try:
            model = parse_model(doc)
        except InvalidResource:
            model = None
        if model is not None:
            try:
                obs.capacity = capacity_of(model, resolve_architecture(model))
                if not obs.capacity.fits:
                    reason = "DoesNotFit"
            except InvalidResource:
                pass
            self._write_status(body, model, obs, outcome)
        meta = body["metadata"]
        self.failed_generation[f"{meta.get('namespace')}/{meta['name']}"] = (
            meta.get("generation") or 0
        )
        outcome.events.append(Event("Warning", reason, "; ".join(obs.problems)[:1000]))
        raise KubePermanentError("invalid spec: " + "; ".join(obs.problems), reason=reason)

    def _deploy(
        self,
        body: Obj,
        model: MultimodalModel,
        validated: Validated,
        obs: Observation,
        outcome: Outcome,
        rebalance: Rebalance | None = None,
    ) -> Outcome:
        kube = self.kube
        ns, name, uid = model.namespace, model.name, body["metadata"].get("uid")
        obs.capacity = validated.capacity
        outcome.latency_target_s = model.spec.autoscaling.latency_target_ms / 1000
        obs.kuberay_installed = kube.has_kind("ray.io/v1", "RayService")
        obs.monitoring_installed = kube.has_kind("monitoring.coreos.com/v1", "PodMonitor")
        kinds = [
            k
            for k in MANAGED_KINDS
            if k not in OPTIONAL_KINDS
            or (k[1] == "RayService" and obs.kuberay_installed)
            or (k[1] == "PodMonitor" and obs.monitoring_installed)
        ]
        # A model never reconciled has no children to find yet: skipping the LISTs saves
        # one call per kind when many models are created at once. Children left by a
        # first reconcile that was cut short are applied over (server-side apply), and
        # any no longer wanted are pruned by the next reconcile, which lists.
        first = not body.get("status") and f"{ns}/{name}" not in self.written
        seen = {} if first else self._observe(ns, name, kinds)
        fresh = plan_for_model(model, validated.architecture, validated.capacity)
        cm = seen.get(("v1", "ConfigMap", placement_configmap_name(model)))
        if rebalance is not None and same_shape(rebalance.plan, fresh):
            self.rebalances[f"{ns}/{name}"] = rebalance
            plan = rebalance.plan
        else:
            plan = current_plan(cm, fresh)
        obs.plan = plan
        self._rebalance_figures(body, obs, fresh)
        args = build_app_args(model, plan)
        desired = build_children(
            model,
            plan,
            args=args,
            uid=uid,
            pod_monitor=obs.monitoring_installed,
            apiserver_cidrs=self.apiserver_cidrs,
        )
        desired = [d for d in desired if d["kind"] != "RayService" or obs.kuberay_installed]
        wanted = {(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in desired}
        extra_kinds = sorted({(k[0], k[1]) for k in wanted} - set(kinds))
        if extra_kinds and not first:  # kinds the builders added beyond the usual set
            seen.update(self._observe(ns, name, extra_kinds))
        obs.network_policies = sum(1 for d in desired if d["kind"] == "NetworkPolicy")

        for child in desired:
            ckey = (child["apiVersion"], child["kind"], child["metadata"]["name"])
            observed = seen.get(ckey)
            if child["kind"] == "RayService" and observed is not None:
                self._recreate_if_needed(model, child, observed, outcome)
            if not needs_apply(child, observed):
                continue
            applied = kube.apply(child)
            outcome.writes += 1
            seen[ckey] = applied
            outcome.events.append(self._applied_event(child, observed))
        for ckey in list(seen):
            if ckey not in wanted:
                kube.delete(ckey[0], ckey[1], ns, ckey[2])
                outcome.writes += 1
                del seen[ckey]
                outcome.events.append(
                    Event("Normal", "Deleted", f"deleted {_describe(ckey[1], ckey[2])}")
                )
        outcome.events = _collapse_created(outcome.events)
        obs.rayservice = seen.get(("ray.io/v1", "RayService", name))
        rayservice = next((d for d in desired if d["kind"] == "RayService"), None)
        if rayservice is not None and obs.rayservice is not None:
            self._sync_worker_bounds(f"{ns}/{name}", rayservice, obs.rayservice, outcome)
        self.observations[f"{ns}/{name}"] = obs
        self._write_status(body, model, obs, outcome)
        if not obs.kuberay_installed:
            raise KubeTemporaryError(
                "KubeRay CRDs not installed (ray.io/v1 RayService); waiting for them",
                reason="KubeRayNotInstalled",
                delay=15,
            )
        return outcome

    def _rebalance_figures(self, body: Obj, obs: Observation, fresh: PlacementPlan) -> None:
        """``status.placement``'s rebalance figures while the rebalanced plan is in force:
        from memory, or after an operator restart from the status written before."""
        meta = body["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        plan = obs.plan
        done = self.rebalances.get(key)
        previous = self.observations.get(key)
        if done is not None and done.plan == plan:
            obs.balancedness_before = done.balancedness_before
            obs.moved_experts = done.moved_experts
            obs.last_rebalance_time = done.time
        elif previous is not None and previous.plan == plan:
            obs.balancedness_before = previous.balancedness_before
            obs.moved_experts = previous.moved_experts
            obs.last_rebalance_time = previous.last_rebalance_time
        elif plan is not None and plan != fresh:
            figures = rebalance_figures(body.get("status"), plan)
            if figures is not None:
                obs.balancedness_before, obs.moved_experts, obs.last_rebalance_time = figures

    def _sync_worker_bounds(self, key: str, desired: Obj, observed: Obj, outcome: Outcome) -> None:
        """Patch the worker groups' minReplicas/maxReplicas of the running RayClusters.

        KubeRay leaves these bounds out of its cluster hash (so that the autoscaler's
        replica changes do not roll the cluster) and so never applies a change of them to
        a running RayCluster (ray-project/kuberay#2331, #4568). The clusters come from the
        RayService's status (active, pending); each is read once per change of the bounds
        or of the cluster names, and patched only when it differs. Best effort: a failure
        is logged and retried by the next reconcile, the rest of the reconcile goes on."""
        clusters = serving_clusters(observed)
        bounds = worker_bounds(desired)
        if not clusters or not bounds:
            return
        memo = (clusters, tuple(sorted(bounds.items())))
        if self.bounds_synced.get(key) == memo:
            return
        ns = desired["metadata"]["namespace"]
        try:
            if not self.kube.has_kind("ray.io/v1", "RayCluster"):
                return
            for name in clusters:
                cluster = self.kube.get("ray.io/v1", "RayCluster", ns, name)
                if cluster is None:
                    return  # not created yet (or gone): look again next time
                if not owned_by(cluster, observed):
                    log.warning("RayCluster %s/%s is not owned by its RayService", ns, name)
                    continue
                ops = bounds_patch(cluster, bounds)
                if not ops:
                    continue
                self.kube.json_patch("ray.io/v1", "RayCluster", ns, name, ops)
                outcome.writes += 1
                shown = ", ".join(f"{g} {lo}..{hi}" for g, (lo, hi) in sorted(bounds.items()))
                outcome.events.append(
                    Event(
                        "Normal",
                        "WorkerBoundsUpdated",
                        f"worker replica bounds of RayCluster {name} set to {shown} (KubeRay "
                        "does not apply them to a running cluster)",
                    )
                )
        except ApiFailure as e:
            log.warning("could not sync the worker bounds of %s: %s", key, e)
            return
        self.bounds_synced[key] = memo

    def _recreate_if_needed(
        self, model: MultimodalModel, child: Obj, observed: Obj, outcome: Outcome
    ) -> None:
        """With the Recreate strategy, delete a RayService whose cluster must change."""
        if upgrade_strategy(model) != "Recreate":
            return
        want = child["metadata"]["annotations"].get(CLUSTER_HASH_ANNOTATION)
        have = (observed["metadata"].get("annotations") or {}).get(CLUSTER_HASH_ANNOTATION)
        if have is None or want == have:
            return
        self.kube.delete("ray.io/v1", "RayService", model.namespace, model.name)
        outcome.writes += 1
        outcome.events.append(
            Event(
                "Normal",
                "RecreatingCluster",
                f"cluster change with upgrade strategy Recreate: deleted RayService "
                f"{model.name}; a new one is created once it is gone",
            )
        )
        raise KubeTemporaryError(
            "waiting for the old RayService to be deleted", reason="Conflict", delay=2
        )

    @staticmethod
    def _applied_event(child: Obj, observed: Obj | None) -> Event:
        kind, name = child["kind"], child["metadata"]["name"]
        if observed is None:
            return Event("Normal", "Created", f"created {_describe(kind, name)}")
        if kind == "RayService":
            want = child["metadata"]["annotations"].get(CLUSTER_HASH_ANNOTATION)
            have = (observed["metadata"].get("annotations") or {}).get(CLUSTER_HASH_ANNOTATION)
            if want != have:
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
        return Event("Normal", "Updated", f"updated {_describe(kind, name)}")

    def _write_status(
        self, body: Obj, model: MultimodalModel, obs: Observation, outcome: Outcome
    ) -> None:
        meta = body["metadata"]
        key, uid = f"{meta.get('namespace')}/{meta['name']}", meta.get("uid")
        # What this operator wrote last is newer than the status of a cached body.
        mine = self.written.get(key)
        old = mine[1] if mine and mine[0] == uid else body.get("status") or {}
        status = compute_status(model, obs, previous=old, now=now_iso())
        outcome.status = status
        outcome.ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"]
        )
        if status == old:
            return
        written = self.kube.patch_status(
            meta.get("namespace") or "default", meta["name"], status, meta.get("generation")
        )
        if written:  # otherwise the spec moved on and its own reconcile writes the status
            self.written[key] = (uid, status)
            outcome.writes += 1

    # -- status-only refresh from a RayService event

    def refresh(self, body: Obj, rayservice: Obj | None) -> Outcome | None:
        """Recompute the status with a new RayService observation (no reads)."""
        meta = body["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        lock = self.lock(key)
        lock.acquire()
        try:
            return self._refresh(body, rayservice, key)
        finally:
            self._drain_and_release(key, lock)

    def _refresh(self, body: Obj, rayservice: Obj | None, key: str) -> Outcome | None:
        meta = body["metadata"]
        previous = self.observations.get(key)
        if previous is None or previous.generation != meta.get("generation"):
            return None
        try:
            model = MultimodalModel.model_validate(model_document(body))
        except ValueError:
            return None
        obs = Observation(**{**previous.__dict__, "rayservice": rayservice})
        outcome = Outcome(status={}, observation=obs)
        self._write_status(body, model, obs, outcome)
        self.observations[key] = obs
        return outcome

    # -- deletion

    def cleanup(self, body: Obj) -> int:
        """Delete every child of the model; returns how many were deleted."""
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        key = f"{ns}/{name}"
        kinds = [
            k for k in MANAGED_KINDS if k not in OPTIONAL_KINDS or self.kube.has_kind(k[0], k[1])
        ]
        deleted = 0
        with self.lock(key):
            try:
                for (api_version, kind, child), _obj in self._observe(ns, name, kinds).items():
                    deleted += self.kube.delete(api_version, kind, ns, child)
            except ApiFailure as e:
                raise to_kopf_error(e, f"deleting the children of {key}") from e
            self.observations.pop(key, None)
            self.written.pop(key, None)
            self.failed_generation.pop(key, None)
            self.rebalances.pop(key, None)
            self.bounds_synced.pop(key, None)
        return deleted
