"""The load the rebalance timer reads (pure): where it is read, what it says, when to look.

The operator's rebalance timer (``mmo_operator.rebalance_timer``) reads the expert load a
model's Serve application reports on ``GET /v1/expert-load`` (the JSON of
``mmo_serving.engine.types.ExpertLoad.to_json_dict()`` plus the plan the replica runs),
turns it into the planner's ``[layers][experts]`` load matrix and decides with
``should_rebalance``. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
import string
from dataclasses import dataclass
from typing import Any

from mmo_operator.planning.rebalance_decision import RebalanceDecision
from mmo_serving.config import PlacementPlan

# KubeRay names the Service in front of a RayService's Serve proxies <rayservice>-serve-svc.
DEFAULT_LOAD_URL = "http://{service}.{namespace}.svc:{port}/v1/expert-load"
URL_FIELDS = ("name", "namespace", "port", "service")


def expert_load_url(template: str, *, name: str, namespace: str, port: int) -> str:
    """The load URL of one model from ``template`` (``{name}``, ``{namespace}``,
    ``{port}``, ``{service}`` = ``{name}-serve-svc``)."""
    check_url_template(template)
    return template.format(name=name, namespace=namespace, port=port, service=f"{name}-serve-svc")


def check_url_template(template: str) -> None:
    """ValueError naming a placeholder the template may not use, or a bad scheme."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"expert load URL template {template!r}: {e}") from e
    for f in fields:
        if f not in URL_FIELDS:
            raise ValueError(
                f"expert load URL template {template!r}: unknown placeholder {{{f}}}; "
                f"valid: {', '.join('{' + v + '}' for v in URL_FIELDS)}"
            )
    if not template.startswith(("http://", "https://")):
        raise ValueError(
            f"expert load URL template {template!r}: must start with http:// or https://"
        )


@dataclass(frozen=True)
class ObservedLoad:
    """What one read of ``/v1/expert-load`` says, checked against the plan in force."""

    loads: list[list[float]]  # [layer][logical expert] tokens since the plan was applied
    plan_version: int
    served_plan: PlacementPlan | None  # the plan the replica that answered runs
    total: int  # tokens in the window


def _int_field(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expert load: {key} is {value!r}, expected an integer >= 0")
    return value


def parse_expert_load(doc: Any, plan: PlacementPlan) -> ObservedLoad:
    """The ``window`` counts of the engine's JSON summed over ranks, as a load matrix.

    ValueError (naming the field) when the document is not the engine's format or does
    not match ``plan`` (layers, experts, ranks).
    """
    if not isinstance(doc, dict):
        raise ValueError(f"expert load: expected a JSON object, got {type(doc).__name__}")
    layers = _int_field(doc, "numLayers")
    experts = _int_field(doc, "numExperts")
    ranks = _int_field(doc, "numRanks")
    version = _int_field(doc, "planVersion")
    want = (len(plan.layers), plan.num_experts, plan.num_gpus)
    if (layers, experts, ranks) != want:
        raise ValueError(
            f"expert load: {layers} layers x {experts} experts x {ranks} ranks, but the plan "
            f"in force has {want[0]} layers x {want[1]} experts x {want[2]} GPUs"
        )
    window = doc.get("window")
    matrix: list[list[float]] = []
    total = 0
    if not isinstance(window, list) or len(window) != layers:
        raise ValueError(f"expert load: window must be a [{layers}][{experts}][{ranks}] list")
    for li, row in enumerate(window):
        if not isinstance(row, list) or len(row) != experts:
            raise ValueError(f"expert load: window[{li}] must list {experts} experts")
        out_row: list[float] = []
        for ei, per_rank in enumerate(row):
            if not isinstance(per_rank, list) or len(per_rank) != ranks:
                raise ValueError(f"expert load: window[{li}][{ei}] must list {ranks} ranks")
            tokens = 0
            for value in per_rank:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(
                        f"expert load: window[{li}][{ei}] holds {value!r}; token counts are "
                        "integers >= 0"
                    )
                tokens += value
            out_row.append(float(tokens))
            total += tokens
        matrix.append(out_row)
    served = doc.get("placement")
    served_plan = None
    if served is not None:
        try:
            served_plan = PlacementPlan.model_validate(served)
        except ValueError as e:
            raise ValueError(f"expert load: placement is not a placement plan: {e}") from e
    return ObservedLoad(matrix, version, served_plan, total)


def effective_interval(interval_seconds: float, override: float | None) -> float:
    """``spec.experts.rebalance.intervalSeconds``, or the operator's test override."""
    return float(override) if override is not None else float(interval_seconds)


def parse_time(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 ``...Z`` time (``status.placement.lastRebalanceTime``)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def is_due(now: float, last: float | None, interval: float) -> bool:
    """A check is due when ``interval`` seconds have passed since ``last`` (None: never)."""
    return last is None or now - last >= interval


def rebalanced_message(decision: RebalanceDecision, version: int) -> str:
    """The message of the ``Rebalanced`` event (the figures a person wants to see)."""
    return (
        f"expert placement rebalanced from the load observed under plan version {version}: "
        f"balancedness {decision.balancedness_before:.3f} -> "
        f"{decision.balancedness_after:.3f}, {decision.moved} expert(s) moved; applied in "
        "place through serveConfigV2 user_config (no new Ray cluster, no rank restart)"
    )
