"""One reconcile of a MultimodalModel: validate -> plan -> build -> apply -> observe -> status.

Called by every kopf handler and timer (in a worker thread: the kubernetes client is
synchronous). Idempotent: a child is applied only when what the API server holds differs
from what the builders produce (the ``spec-hash`` annotation, and every desired field
present with the same value), and the status only when it changed, so reconciling an
unchanged object writes nothing. What is kept per model between reconciles is its
``ModelState`` (model_state.py).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

from mmo_operator.api.parse import parse_model, resolve_architecture
from mmo_operator.api.problems import InvalidResource
from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_operator.builders import build_children
from mmo_operator.builders.app_args import build_app_args
from mmo_operator.builders.common import placement_configmap_name
from mmo_operator.builders.networkpolicy import NetworkPeers
from mmo_operator.children import (
    MANAGED_KINDS,
    OPTIONAL_KINDS,
    RAYSERVICE,
    apply_children,
    child_key,
    delete_all,
    observe,
)
from mmo_operator.events import Event
from mmo_operator.kube import (
    ApiFailure,
    Kube,
    KubePermanentError,
    KubeTemporaryError,
    to_kopf_error,
)
from mmo_operator.model_state import (
    ModelState,
    ModelStates,
    Rebalance,
    carry_rebalance_figures,
    model_document,
    model_key,
)
from mmo_operator.objects import Obj
from mmo_operator.planning import plan_for_model
from mmo_operator.planning.current import plan_in_force, same_shape
from mmo_operator.policy.addresses import ClusterNetworks
from mmo_operator.policy.admission import egress_notes
from mmo_operator.status import Observation, compute_status, unparsed_status
from mmo_operator.validation import Validated, capacity_of, validate
from mmo_operator.worker_bounds import sync_worker_bounds

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status: Obj
    writes: int = 0
    events: list[Event] = field(default_factory=list)
    ready: bool = False
    observation: Observation | None = None
    latency_target_s: float | None = None  # spec.autoscaling.latencyTargetMs, for alerts
    invalid: str | None = None  # the reason (InvalidSpec, DoesNotFit) of a spec found invalid


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Holds the API client and the ``ModelState`` of every model."""

    def __init__(
        self,
        kube: Kube,
        *,
        webhook: bool = True,
        peers: NetworkPeers | None = None,
        cluster: ClusterNetworks | None = None,
    ) -> None:
        self.kube = kube
        self.webhook = webhook
        # The peers' namespaces and the API server's addresses (the NetworkPolicies).
        self.peers = peers or NetworkPeers()
        # The cluster's pod and Service CIDRs and aggregator namespaces (admission).
        self.cluster = cluster or ClusterNetworks()
        self.states = ModelStates()

    # -- entry points (each holds the model's lock)

    def reconcile(self, body: Obj, *, rebalance: Rebalance | None = None) -> Outcome:
        """``rebalance``: deploy its plan (written to the placement ConfigMap and the
        serveConfigV2 user_config, in place) instead of the one in the ConfigMap."""
        state = self.states(model_key(body))
        state.lock.acquire()
        try:
            state.body = body
            return self._reconcile(body, state, rebalance)
        finally:
            self._drain_and_release(state)

    def refresh(self, body: Obj, rayservice: Obj | None) -> Outcome | None:
        """Recompute the status with a new RayService observation (no reads)."""
        state = self.states(model_key(body))
        state.lock.acquire()
        try:
            return self._refresh(body, rayservice, state)
        except ApiFailure:
            state.status_stale = True  # the catch-up loop retries
            raise
        finally:
            self._drain_and_release(state)

    def refresh_soon(self, body: Obj, rayservice: Obj | None) -> bool:
        """Hand a RayService report to the reconcile running for its model, if any."""
        return self.states.hold(model_key(body), (body, rayservice))

    def _drain_and_release(self, state: ModelState) -> None:
        """Apply the RayService reports that arrived meanwhile, then release the model. A
        report whose status write fails is marked stale: the catch-up loop retries it."""
        while (late := self.states.take_or_release(state)) is not None:
            try:
                self._refresh(late[0], late[1], state)
            except ApiFailure as e:
                state.status_stale = True
                log.warning("status refresh of %s failed (retried): %s", model_key(late[0]), e)

    # -- the reconcile

    def _reconcile(self, body: Obj, state: ModelState, rebalance: Rebalance | None) -> Outcome:
        meta = body["metadata"]
        obs = Observation(
            generation=meta.get("generation"),
            webhook=self.webhook,
            apiserver_egress=bool(self.peers.apiserver_cidrs),
        )
        outcome = Outcome(status={}, observation=obs)
        if meta.get("deletionTimestamp"):
            return outcome  # being deleted: cleanup() owns it now
        doc = model_document(body)
        model: MultimodalModel | None = None
        try:
            try:
                validated = validate(doc, cluster=self.cluster)
            except InvalidResource as e:
                return self._invalid(body, doc, e, state, outcome)
            state.failed_generation = None
            model = validated.model
            return self._deploy(body, validated, state, outcome, rebalance)
        except (KubeTemporaryError, KubePermanentError) as e:
            e.events = list(outcome.events)
            raise
        except ApiFailure as e:
            err = to_kopf_error(e, f"reconciling {model_key(body)}")
            done = list(outcome.events)
            # Shown in Reconciled (a 409 is only a race, retried at once); Ready keeps
            # following the serving side.
            if model is not None and e.status != 409:
                permanent = isinstance(err, KubePermanentError)
                obs.apply_error = str(err) if permanent else f"{err} (retrying)"
                try:
                    self._write_status(body, model, state, outcome)
                except ApiFailure:
                    log.warning("could not record the error in the status of %s", model_key(body))
            err.events = done
            raise err from e

    def _invalid(
        self, body: Obj, doc: Obj, err: InvalidResource, state: ModelState, outcome: Outcome
    ) -> Outcome:
        """Status and one Warning event for an invalid spec; not retried until it changes."""
        obs = outcome.observation
        assert obs is not None
        obs.problems = [str(p) for p in err.problems]
        reason = "InvalidSpec"
        try:
            model: MultimodalModel | None = parse_model(doc)
        except InvalidResource:
            model = None
        if model is not None:
            try:
                obs.capacity = capacity_of(model, resolve_architecture(model))
                if not obs.capacity.fits:
                    reason = "DoesNotFit"
            except InvalidResource:
                pass
        self._write_status(body, model, state, outcome)
        state.failed_generation = body["metadata"].get("generation") or 0
        outcome.invalid = reason
        outcome.events.append(Event("Warning", reason, "; ".join(obs.problems)[:1000]))
        return outcome

    def _deploy(
        self,
        body: Obj,
        validated: Validated,
        state: ModelState,
        outcome: Outcome,
        rebalance: Rebalance | None,
    ) -> Outcome:
        kube, model, obs = self.kube, validated.model, outcome.observation
        assert obs is not None
        obs.capacity = validated.capacity
        outcome.latency_target_s = model.spec.autoscaling.latency_target_ms / 1000
        obs.kuberay_installed = kube.has_kind(*RAYSERVICE)
        obs.monitoring_installed = kube.has_kind("monitoring.coreos.com/v1", "PodMonitor")
        kinds = [
            k
            for k in MANAGED_KINDS
            if k not in OPTIONAL_KINDS
            or (k == RAYSERVICE and obs.kuberay_installed)
            or (k[1] == "PodMonitor" and obs.monitoring_installed)
        ]
        # A model never reconciled has no children to find yet: skipping the LISTs saves
        # one call per kind when many models are created at once. After a reconcile that
        # was cut short, the children it applied are remembered and not applied again;
        # any no longer wanted are pruned by the next reconcile, which lists.
        first = not body.get("status") and state.written is None
        seen = dict(state.children) if first else observe(kube, model.namespace, model.name, kinds)
        fresh = plan_for_model(model, validated.architecture, validated.capacity)
        cm = seen.get(("v1", "ConfigMap", placement_configmap_name(model)))
        if rebalance is not None and same_shape(rebalance.plan, fresh):
            state.rebalance = rebalance
            obs.plan = rebalance.plan
        else:
            obs.plan = plan_in_force(cm, fresh)
        carry_rebalance_figures(state, body.get("status"), obs, fresh)
        desired = build_children(
            model,
            obs.plan,
            args=build_app_args(model, obs.plan),
            uid=body["metadata"].get("uid"),
            pod_monitor=obs.monitoring_installed,
            peers=self.peers,
        )
        desired = [d for d in desired if d["kind"] != "RayService" or obs.kuberay_installed]
        wanted = {child_key(d) for d in desired}
        extra_kinds = sorted({(k[0], k[1]) for k in wanted} - set(kinds))
        if extra_kinds and not first:  # kinds the builders added beyond the usual set
            seen.update(observe(kube, model.namespace, model.name, extra_kinds))
        obs.network_policies = sum(1 for d in desired if d["kind"] == "NetworkPolicy")
        obs.egress_notes = egress_notes(model, self.cluster)
        rs_key = (*RAYSERVICE, model.name)
        obs.rayservice = seen.get(rs_key)
        obs.cluster_change_generation = state.cluster_change_generation
        state.children = seen
        outcome.writes += apply_children(kube, model, desired, state, outcome.events)
        obs.rayservice = seen.get(rs_key)
        obs.cluster_change_generation = state.cluster_change_generation
        rayservice = next((d for d in desired if d["kind"] == "RayService"), None)
        if rayservice is not None and obs.rayservice is not None:
            outcome.events += sync_worker_bounds(kube, state, rayservice, obs.rayservice)
        state.observation = obs
        self._write_status(body, model, state, outcome)
        if not obs.kuberay_installed:
            raise KubeTemporaryError(
                "KubeRay CRDs not installed (ray.io/v1 RayService); waiting for them",
                reason="KubeRayNotInstalled",
                delay=15,
            )
        return outcome

    def _write_status(
        self, body: Obj, model: MultimodalModel | None, state: ModelState, outcome: Outcome
    ) -> None:
        meta = body["metadata"]
        obs = outcome.observation
        assert obs is not None
        # What this operator wrote last is newer than the status of a cached body.
        mine = state.written
        old = mine[1] if mine and mine[0] == meta.get("uid") else body.get("status") or {}
        if model is None:
            status = unparsed_status(obs, previous=old, now=now_iso())
        else:
            status = compute_status(model, obs, previous=old, now=now_iso())
        outcome.status = status
        outcome.ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"]
        )
        if status == old:
            state.status_stale = False
            return
        written = self.kube.patch_status(
            meta.get("namespace") or "default", meta["name"], status, meta.get("generation")
        )
        state.status_stale = False
        if written:  # otherwise the spec moved on and its own reconcile writes the status
            state.written = (meta.get("uid"), status)
            outcome.writes += 1

    def _refresh(self, body: Obj, rayservice: Obj | None, state: ModelState) -> Outcome | None:
        previous = state.observation
        if previous is None or previous.generation != body["metadata"].get("generation"):
            return None
        try:
            model = MultimodalModel.model_validate(model_document(body))
        except ValueError:
            return None
        obs = Observation(**{**previous.__dict__, "rayservice": rayservice})
        obs.cluster_change_generation = state.cluster_change_generation
        outcome = Outcome(status={}, observation=obs)
        state.observation = obs  # kept even if the write fails: the retry writes it
        if rayservice is not None:
            state.children[(*RAYSERVICE, model.name)] = rayservice
        self._write_status(body, model, state, outcome)
        return outcome

    # -- deletion

    def cleanup(self, body: Obj) -> int:
        """Delete every child of the model; returns how many were deleted."""
        meta, key = body["metadata"], model_key(body)
        with self.states(key).lock:
            try:
                deleted = delete_all(self.kube, meta.get("namespace") or "default", meta["name"])
            except ApiFailure as e:
                raise to_kopf_error(e, f"deleting the children of {key}") from e
            self.states.forget(key)
        return deleted
