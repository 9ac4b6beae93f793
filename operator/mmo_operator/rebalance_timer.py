"""Live expert rebalancing: the operator's ``rebalance`` timer.

For a MultimodalModel with ``spec.experts.rebalance.enabled`` and ``Ready``, every
``intervalSeconds`` (the kopf timer ticks every ``--rebalance-check-seconds`` and acts
only when the interval has passed since the last check; the first check comes one
interval after the operator first sees the model, or after ``lastRebalanceTime``):

1. ``GET`` the expert load from the model's Serve endpoint (``--expert-load-url``, by
   default ``http://NAME-serve-svc.NAMESPACE.svc:PORT/v1/expert-load``, the Service
   KubeRay puts in front of the Serve proxies), with a short timeout;
2. take the plan in force (the placement ConfigMap's) and the load counted since that
   plan was applied (``window``), and decide with ``should_rebalance`` (low-churn
   re-planning; ``minImprovement`` is the least drop in balancedness worth the moves);
3. when accepted, reconcile with the new plan: it goes to the placement ConfigMap and
   to serveConfigV2's ``user_config``, which KubeRay hands to Serve as a lightweight
   update (the replica's ``reconfigure`` moves the experts between the running ranks;
   no new Ray cluster, no rank restart); ``status.placement`` records balancedness
   before/after, moved experts and ``lastRebalanceTime``; a ``Rebalanced`` event gives
   the figures; ``mmo_operator_rebalances_total`` counts it;
4. otherwise nothing changes (a debug log says why).

A failed read (endpoint down, timeout, wrong JSON) is logged and shown as a Warning
event ``ExpertLoadUnavailable`` at most once per interval; the next tick tries again.

A model served by vLLM (``spec.serving.engine`` vllm, the default for checkpoints) is
skipped: vLLM re-places its experts inside the engine (EPLB) and its front reports no
expert load. A ``Normal RebalanceNotApplicable`` event says so once.
Nothing here raises into kopf. The pure parts are in ``planning/rebalance_load.py`` (the
load read, and when) and ``planning/rebalance_decision.py`` (whether to move experts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import kopf

from mmo_operator import metrics
from mmo_operator.api.problems import InvalidResource
from mmo_operator.api.v1alpha1 import engine_of
from mmo_operator.builders.common import placement_configmap_name
from mmo_operator.events import Event
from mmo_operator.kube import ApiFailure, KubePermanentError, KubeTemporaryError
from mmo_operator.model_state import Rebalance, model_document
from mmo_operator.planning import plan_for_model
from mmo_operator.planning.current import plan_in_force
from mmo_operator.planning.rebalance_decision import should_rebalance
from mmo_operator.planning.rebalance_load import (
    DEFAULT_LOAD_URL,
    effective_interval,
    expert_load_url,
    is_due,
    parse_expert_load,
    parse_time,
    rebalanced_message,
)
from mmo_operator.reconcile import Reconciler, now_iso
from mmo_operator.status import is_ready
from mmo_operator.validation import validate

log = logging.getLogger("mmo_operator.rebalance_timer")

UNAVAILABLE = "ExpertLoadUnavailable"
REBALANCED = "Rebalanced"
FAILED = "RebalanceFailed"
NOT_APPLICABLE = "RebalanceNotApplicable"
ENGINE_REBALANCES = (
    "engine vllm re-places the experts itself (EPLB, on with spec.experts.placement "
    "balanced, window and step from spec.experts.rebalance.intervalSeconds): the "
    "operator does not read expert load or apply plans for this model"
)


@dataclass
class RebalanceOptions:
    url_template: str = DEFAULT_LOAD_URL
    timeout_s: float = 5.0
    check_seconds: float = 15.0  # the kopf timer's period
    interval_override: float | None = None  # tests: instead of spec intervalSeconds


@dataclass
class CheckResult:
    """What one tick did: ``action`` is skipped|kept|rebalanced|unavailable|failed."""

    action: str
    message: str = ""
    events: list[Event] = field(default_factory=list)


def rebalance_enabled(spec: Any) -> bool:
    """kopf ``when`` filter: only models that ask for live rebalancing get the timer."""
    experts = (spec or {}).get("experts") or {}
    return bool((experts.get("rebalance") or {}).get("enabled"))


def fetch_json(url: str, timeout_s: float) -> Any:
    """GET ``url`` and parse its JSON; ValueError with a readable reason on any failure."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body = resp.read(16 * 1024 * 1024)
    except urllib.error.HTTPError as e:
        raise ValueError(f"GET {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(f"GET {url}: {reason}") from e
    try:
        return json.loads(body)
    except ValueError as e:
        raise ValueError(f"GET {url}: the answer is not JSON ({e})") from e


class Rebalancer:
    """Per-model check clocks and the one check a timer tick runs (in a worker thread)."""

    def __init__(self, reconciler: Reconciler, options: RebalanceOptions) -> None:
        self.reconciler = reconciler
        self.options = options
        self._guard = threading.Lock()
        self.last_check: dict[str, float] = {}
        self.last_warning: dict[str, float] = {}
        self.not_applicable: set[str] = set()  # told once that the engine rebalances itself

    def _since(self, key: str, body: dict[str, Any]) -> float | None:
        with self._guard:
            if key in self.last_check:
                return self.last_check[key]
        placement = (body.get("status") or {}).get("placement") or {}
        return parse_time(placement.get("lastRebalanceTime"))

    def _mark(self, key: str, now: float) -> None:
        with self._guard:
            self.last_check[key] = now

    def forget(self, key: str) -> None:
        with self._guard:
            self.last_check.pop(key, None)
            self.last_warning.pop(key, None)
            self.not_applicable.discard(key)

    def check(self, body: dict[str, Any], now: float | None = None) -> CheckResult:
        now = time.time() if now is None else now
        meta = body["metadata"]
        ns, name = meta.get("namespace") or "default", meta["name"]
        key = f"{ns}/{name}"
        if meta.get("deletionTimestamp"):
            return CheckResult("skipped", "being deleted")
        try:
            validated = validate(model_document(body), cluster=self.reconciler.cluster)
        except InvalidResource:
            return CheckResult("skipped", "invalid spec")
        model = validated.model
        settings = model.spec.experts.rebalance
        if not settings.enabled:
            self.forget(key)
            return CheckResult("skipped", "rebalancing disabled")
        if engine_of(model.spec) == "vllm":
            return self._not_applicable(key)
        interval = effective_interval(settings.interval_seconds, self.options.interval_override)
        last = self._since(key, body)
        if last is None:  # first sight: start the clock, let load accumulate
            self._mark(key, now)
            return CheckResult("skipped", "first check in one interval")
        if not is_due(now, last, interval):
            return CheckResult("skipped", "not due")
        if not is_ready(body.get("status")):
            return CheckResult("skipped", "model not Ready")
        url = expert_load_url(
            self.options.url_template, name=name, namespace=ns, port=model.spec.serving.port
        )
        fresh = plan_for_model(model, validated.architecture, validated.capacity)
        try:
            cm = self.reconciler.kube.get("v1", "ConfigMap", ns, placement_configmap_name(model))
        except ApiFailure as e:
            return CheckResult("skipped", f"placement ConfigMap not readable: {e.message}")
        plan = plan_in_force(cm, fresh)
        try:
            observed = parse_expert_load(fetch_json(url, self.options.timeout_s), plan)
        except ValueError as e:
            return self._unavailable(key, now, interval, str(e))
        if observed.served_plan is not None and observed.served_plan != plan:
            # the replica has not applied the plan in force yet (KubeRay/Serve catching up)
            return CheckResult("skipped", "the serving app still runs another plan")
        self._mark(key, now)
        with self._guard:
            self.last_warning.pop(key, None)
        decision = should_rebalance(plan, observed.loads, settings.min_improvement)
        if decision.plan is None:
            return CheckResult("kept", decision.reason)
        record = Rebalance(
            plan=decision.plan,
            balancedness_before=decision.balancedness_before,
            moved_experts=decision.moved,
            time=now_iso(),
        )
        try:
            outcome = self._apply(body, record)
        except (KubeTemporaryError, KubePermanentError, ApiFailure) as e:
            message = f"the new expert plan could not be applied: {e}"[:1000]
            return CheckResult("failed", message, [Event("Warning", FAILED, message)])
        events = [
            *outcome.events,
            Event("Normal", REBALANCED, rebalanced_message(decision, observed.plan_version)),
        ]
        return CheckResult("rebalanced", decision.reason, events)

    def _apply(self, body: dict[str, Any], record: Rebalance) -> Any:
        """Reconcile with the new plan; once more with a fresh body on a stale one."""
        rec = self.reconciler
        try:
            return rec.reconcile(body, rebalance=record)
        except KubeTemporaryError:
            meta = body["metadata"]
            fresh = rec.kube.get(
                body["apiVersion"], body["kind"], meta.get("namespace") or "default", meta["name"]
            )
            if fresh is None:
                raise
            return rec.reconcile(fresh, rebalance=record)

    def _not_applicable(self, key: str) -> CheckResult:
        """Skip a model whose engine rebalances itself; say why once."""
        with self._guard:
            first = key not in self.not_applicable
            self.not_applicable.add(key)
            self.last_check.pop(key, None)
        events = [Event("Normal", NOT_APPLICABLE, ENGINE_REBALANCES)] if first else []
        return CheckResult("skipped", ENGINE_REBALANCES, events)

    def _unavailable(self, key: str, now: float, interval: float, reason: str) -> CheckResult:
        message = f"expert load not read, placement kept: {reason}"[:1000]
        with self._guard:
            last = self.last_warning.get(key)
            warn = is_due(now, last, interval)
            if warn:
                self.last_warning[key] = now
        events = [Event("Warning", UNAVAILABLE, message)] if warn else []
        return CheckResult("unavailable", message, events)


async def run_check(body: Any, rebalancer: Rebalancer, logger: logging.Logger | Any) -> None:
    """One timer tick for one model: never raises (errors are logged and shown)."""
    plain = json.loads(json.dumps(dict(body), default=str))
    try:
        result = await asyncio.to_thread(rebalancer.check, plain)
    except Exception as e:  # a bug must not stop the timer or the other handlers
        log.exception("rebalance check of %s failed", plain["metadata"].get("name"))
        result = CheckResult("failed", f"rebalance check failed: {e}"[:1000])
    if result.action == "rebalanced":
        metrics.count_rebalance()
        logger.info(f"rebalanced: {result.message}")
    elif result.action in ("unavailable", "failed"):
        # the module logger: kopf would post the object logger's warnings as events
        log.warning("%s: %s", plain["metadata"].get("name"), result.message)
    else:
        logger.debug(f"rebalance: {result.action}: {result.message}")
    for ev in result.events[:10]:
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)
