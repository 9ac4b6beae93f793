"""Thin kopf handlers: every one of them calls ``Reconciler`` (reconcile.py).

``build_registry(options)`` registers the handlers in a fresh registry instead of at
import time, so that ``--no-webhook`` runs without the validating handler (kopf refuses
to start with one and no webhook server).

- create / update / resume and a resync timer: ``reconcile`` (idempotent);
- delete: remove the children, then kopf releases the finalizer;
- RayService events (KubeRay reporting): refresh the owner's status from the event;
- a catch-up loop (catch_up.py) for what kopf dropped or a failed write left behind;
- CRD events: which optional kinds are served (no discovery requests); KubeRay or
  prometheus-operator installed later: reconcile every model;
- a rebalance timer for models with ``spec.experts.rebalance.enabled`` (rebalance_timer.py);
- validating admission: exactly the checks of ``mmo validate``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from mmo_operator import metrics
from mmo_operator.api.problems import InvalidResource
from mmo_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from mmo_operator.builders.common import MANAGER, MODEL_LABEL
from mmo_operator.builders.networkpolicy import NetworkPeers
from mmo_operator.catch_up import catch_up
from mmo_operator.kube import Kube, KubePermanentError, KubeTemporaryError
from mmo_operator.model_state import model_document
from mmo_operator.policy.addresses import ClusterNetworks
from mmo_operator.rebalance_timer import RebalanceOptions, Rebalancer, rebalance_enabled, run_check
from mmo_operator.reconcile import Outcome, Reconciler
from mmo_operator.validation import validate

log = logging.getLogger("mmo_operator")

FINALIZER = "serving.mmo.dev/finalizer"
WATCHED_CRDS = {"rayservices.ray.io", "podmonitors.monitoring.coreos.com"}
# CRDs whose events also tell which optional kinds are served (no discovery requests)
KNOWN_CRDS = WATCHED_CRDS | {"rayclusters.ray.io"}
WEBHOOK_ID = "validate"  # the webhook URL path is /validate


@dataclass
class Options:
    webhook: bool = True
    webhook_port: int = 9443
    webhook_host: str | None = None
    webhook_cert: str | None = None
    webhook_key: str | None = None
    webhook_insecure: bool = False
    resync_seconds: float = 60.0
    metrics_port: int | None = 8080
    peering_lifetime: int = 60
    workers: int = 16
    # the namespaces of KubeRay, the operator and monitoring; the API server's addresses
    peers: NetworkPeers = field(default_factory=NetworkPeers)
    # the cluster's pod and Service CIDRs, the aggregator namespaces (admission)
    cluster: ClusterNetworks = field(default_factory=ClusterNetworks)
    rebalance: RebalanceOptions = field(default_factory=RebalanceOptions)


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def _key(body: Any) -> str:
    return f"{body['metadata'].get('namespace')}/{body['metadata']['name']}"


def post_events(body: Any, events: list[Any]) -> None:
    for ev in events[:10]:
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)


def record(key: str, outcome: Outcome) -> None:
    """The metrics of a reconcile that ended without an error."""
    metrics.set_ready(key, outcome.ready)
    metrics.set_reconciled(key, True)
    if outcome.latency_target_s is not None:
        metrics.set_latency_target(key, outcome.latency_target_s)
    if outcome.invalid:
        metrics.count_error(outcome.invalid)


def _reconciler(memo: Any) -> Reconciler:
    rec: Reconciler = memo.reconciler
    return rec


async def run_reconcile(body: Any, memo: Any, logger: logging.Logger | Any) -> None:
    """Reconcile one model, with metrics, events and error reasons."""
    rec = _reconciler(memo)
    key = _key(body)
    state = rec.states(key)  # kopf's work on it, for the catch-up loop
    state.kopf_handling += 1
    with metrics.timed():
        try:
            outcome = await asyncio.to_thread(rec.reconcile, _plain(body))
        except (KubeTemporaryError, KubePermanentError) as e:
            # Ready follows the serving side only: a failed write shows in Reconciled
            metrics.count_error(e.reason)
            metrics.set_reconciled(key, False)
            post_events(body, getattr(e, "events", []))
            if isinstance(e, KubeTemporaryError):
                state.kopf_retry_at = time.monotonic() + (e.delay or 0)
            raise
        finally:
            state.kopf_handling -= 1
            state.kopf_active_at = time.monotonic()
    record(key, outcome)
    post_events(body, outcome.events)
    if outcome.writes:
        logger.info(f"reconciled with {outcome.writes} write(s); ready={outcome.ready}")


def build_registry(options: Options) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="serving.mmo.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="serving.mmo.dev", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING  # our own events say what happened
        settings.networking.error_backoffs = [1, 2, 4, 8]
        settings.peering.lifetime = options.peering_lifetime
        if options.webhook:
            settings.admission.server = kopf.WebhookServer(
                port=options.webhook_port,
                host=options.webhook_host,
                certfile=options.webhook_cert,
                pkeyfile=options.webhook_key,
                insecure=options.webhook_insecure,
            )
        memo.reconciler = Reconciler(
            Kube(pool_size=options.workers),
            webhook=options.webhook,
            peers=options.peers,
            cluster=options.cluster,
        )
        memo.rebalancer = Rebalancer(memo.reconciler, options.rebalance)
        # reconciles run in threads (the kubernetes client is synchronous)
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=options.workers)
        )
        if options.metrics_port:
            metrics.serve(options.metrics_port)
        memo.catch_up = asyncio.create_task(
            catch_up(memo.reconciler, on_done=_caught_up),
            name="mmo-catch-up",
        )

    @kopf.on.cleanup(registry=registry)
    async def stop_catch_up(memo: Any, **_: Any) -> None:
        # kopf waits 5 s for tasks it did not start before it cancels them
        task = getattr(memo, "catch_up", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info("catch-up loop stopped")

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The standard login: the in-cluster service account, else KUBECONFIG.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.index(*resource, id="models", registry=registry)
    def models(namespace: str | None, name: str, body: Any, memo: Any, **_: Any) -> dict[Any, Any]:
        plain = _plain(body)
        # the catch-up loop's view of every model, even one whose event kopf dropped
        state = _reconciler(memo).states(f"{namespace}/{name}")
        state.body, state.kopf_active_at = plain, time.monotonic()
        return {(namespace, name): plain}

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", registry=registry)
    async def reconcile(body: Any, memo: Any, logger: Any, **_: Any) -> None:
        await run_reconcile(body, memo, logger)

    @kopf.timer(
        *resource,
        interval=options.resync_seconds,
        initial_delay=options.resync_seconds,
        id="resync",
        registry=registry,
    )
    async def resync(body: Any, memo: Any, logger: Any, **_: Any) -> None:
        state = _reconciler(memo).states.peek(_key(body))
        generation = body["metadata"].get("generation") or 0
        if state is not None and state.failed_generation == generation:
            return  # permanent until the spec changes
        if body["metadata"].get("deletionTimestamp"):
            return
        await run_reconcile(body, memo, logger)

    @kopf.timer(
        *resource,
        interval=options.rebalance.check_seconds,
        initial_delay=options.rebalance.check_seconds,
        when=lambda spec, **_: rebalance_enabled(spec),
        id="rebalance",
        registry=registry,
    )
    async def rebalance(body: Any, memo: Any, logger: Any, **_: Any) -> None:
        # live expert rebalancing from the serving engine's load (rebalance_timer.py)
        await run_check(body, memo.rebalancer, logger)

    @kopf.on.delete(*resource, id="cleanup", registry=registry)
    async def delete(body: Any, memo: Any, logger: Any, **_: Any) -> None:
        rec = _reconciler(memo)
        try:
            deleted = await asyncio.to_thread(rec.cleanup, _plain(body))
        except KubeTemporaryError as e:
            metrics.count_error(e.reason)
            raise
        metrics.forget(_key(body))
        memo.rebalancer.forget(_key(body))
        logger.info(f"deleted {deleted} child object(s); releasing the finalizer")

    @kopf.on.event(
        "ray.io",
        "v1",
        "rayservices",
        labels={"app.kubernetes.io/managed-by": MANAGER},
        id="rayservice-status",
        registry=registry,
    )
    async def rayservice_changed(
        body: Any, type: Any, memo: Any, models: Any = None, **_: Any
    ) -> None:
        owner = (body.get("metadata", {}).get("labels") or {}).get(MODEL_LABEL)
        namespace = body["metadata"].get("namespace")
        if models is None or not owner or (namespace, owner) not in models:
            return
        model_body = next(iter(models[(namespace, owner)]))
        rayservice = None if type == "DELETED" else _plain(body)
        rec = _reconciler(memo)
        if rec.refresh_soon(model_body, rayservice):
            return  # a reconcile of that model runs now and applies it when done
        try:
            outcome = await asyncio.to_thread(rec.refresh, model_body, rayservice)
        except Exception as e:  # keep the watch alive; the catch-up loop retries
            log.warning(f"status refresh of {namespace}/{owner} failed (retried): {e}")
            return
        if outcome is not None:
            metrics.set_ready(f"{namespace}/{owner}", outcome.ready)

    @kopf.on.event(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        when=lambda name, **_: name in KNOWN_CRDS,
        id="crd-changed",
        registry=registry,
    )
    async def crd_changed(
        name: str, type: Any, body: Any, memo: Any, models: Any = None, **_: Any
    ) -> None:
        rec = _reconciler(memo)
        rec.kube.forget_discovery()
        rec.kube.learn_crd(_plain(body), deleted=type == "DELETED")
        if type is None or models is None or name not in WATCHED_CRDS:
            return  # the initial listing: resume/create handlers reconcile anyway
        for key in list(models.keys()):
            for body in list(models.get(key, [])):
                try:
                    await asyncio.to_thread(rec.reconcile, body)
                except (KubeTemporaryError, KubePermanentError) as e:
                    log.info(f"after CRD {name} changed, {key}: {e}")

    if options.webhook:

        @kopf.on.validate(*resource, id=WEBHOOK_ID, registry=registry)
        def admit(body: Any, **kwargs: Any) -> None:
            if kwargs.get("operation") == "UPDATE" and not spec_changed(body, kwargs.get("old")):
                return  # metadata only (kopf's finalizer, a deletion): nothing to judge
            admission_check(_plain(body), options.cluster)

    return registry


def _caught_up(body: Any, outcome: Outcome | None, error: Exception | None) -> None:
    """The metrics of a catch-up reconcile (its events are posted by the loop)."""
    if error is not None:
        metrics.set_reconciled(_key(body), False)
    elif outcome is not None:
        record(_key(body), outcome)


def spec_changed(body: Any, old: Any) -> bool:
    """An update worth judging: a new spec. An object admitted under older rules must
    still lose its finalizer (and take labels or annotations) after the rules tighten."""
    if old is None:
        return True
    return bool(_plain(body).get("spec") != _plain(old).get("spec"))


def admission_check(body: dict[str, Any], cluster: ClusterNetworks | None = None) -> None:
    """Reject a MultimodalModel with the messages of ``mmo validate`` (with the cluster's
    ranges and aggregator namespaces of the operator's flags)."""
    try:
        validate(model_document(body), cluster=cluster)
    except InvalidResource as e:
        raise kopf.AdmissionError("\n".join(str(p) for p in e.problems), code=422) from e
