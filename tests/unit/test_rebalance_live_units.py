"""Pure parts of live rebalancing: load URL, the engine's load JSON, clocks, figures."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.cli import main
from mmo_operator.planning.placement import plan_placement
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
from mmo_operator.policy.addresses import ClusterNetworks
from mmo_operator.rebalance_timer import RebalanceOptions, Rebalancer
from mmo_operator.status import rebalance_figures
from mmo_serving.config import PlacementPlan

ROOT = Path(__file__).resolve().parents[2]


def _plan() -> PlacementPlan:
    return plan_placement([[1.0] * 4, [1.0] * 4], num_gpus=2, slots_per_gpu=2)


def _doc(plan: PlacementPlan) -> dict[str, Any]:
    window = [[[10 * (e + 1), e] for e in range(4)] for _ in range(2)]
    return {
        "numLayers": 2,
        "numExperts": 4,
        "numRanks": 2,
        "planVersion": 3,
        "tokens": window,
        "window": window,
        "balancedness": [1.0, 1.0],
        "model": "m",
        "placement": plan.model_dump(mode="json", by_alias=True),
    }


def test_rebalance_default_url_is_kuberays_serve_service() -> None:
    url = expert_load_url(DEFAULT_LOAD_URL, name="vqa", namespace="ml", port=8000)
    assert url == "http://vqa-serve-svc.ml.svc:8000/v1/expert-load"
    local = expert_load_url(
        "http://127.0.0.1:9/{namespace}/{name}/{service}", name="a", namespace="b", port=1
    )
    assert local == "http://127.0.0.1:9/b/a/a-serve-svc"


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("http://{host}/x", "unknown placeholder {host}; valid: {name}, {namespace}"),
        ("ftp://{service}/x", "must start with http:// or https://"),
        ("http://{name/x", "expert load URL template"),
    ],
)
def test_rebalance_bad_url_template(template: str, needle: str) -> None:
    with pytest.raises(ValueError, match="expert load URL template") as e:
        expert_load_url(template, name="a", namespace="b", port=1)
    assert needle in str(e.value)


def test_rebalance_bad_url_flag_exits_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator", "--expert-load-url", "http://{pod}:8000/x"]) == 2
    err = capsys.readouterr().err
    assert "--expert-load-url" in err and "unknown placeholder {pod}" in err
    assert main(["operator", "--rebalance-check-seconds", "0"]) == 2
    assert "--rebalance-check-seconds must be > 0" in capsys.readouterr().err


def test_rebalance_parse_sums_the_window_over_ranks() -> None:
    plan = _plan()
    observed = parse_expert_load(_doc(plan), plan)
    assert observed.loads == [[10.0, 21.0, 32.0, 43.0]] * 2
    assert observed.total == 2 * (10 + 21 + 32 + 43)
    assert observed.plan_version == 3 and observed.served_plan == plan
    no_plan = {k: v for k, v in _doc(plan).items() if k != "placement"}
    assert parse_expert_load(no_plan, plan).served_plan is None


def _broken(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_doc(_plan()))
    if path == "window00":
        doc["window"][0][0] = value
    elif path == "window000":
        doc["window"][0][0][0] = value
    else:
        doc[path] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([1, 2], "expected a JSON object, got list"),
        (_broken("numLayers", "2"), "numLayers is '2', expected an integer >= 0"),
        (_broken("numExperts", 5), "2 layers x 5 experts x 2 ranks, but the plan in force "),
        (_broken("numRanks", 4), "has 2 layers x 4 experts x 2 GPUs"),
        (_broken("planVersion", -1), "planVersion is -1"),
        (_broken("window", None), "window must be a [2][4][2] list"),
        (_broken("window00", [1]), "window[0][0] must list 2 ranks"),
        (_broken("window000", -5), "window[0][0] holds -5; token counts are integers >= 0"),
        (_broken("window000", True), "window[0][0] holds True"),
        (_broken("placement", {"strategy": "x"}), "placement is not a placement plan"),
    ],
)
def test_rebalance_parse_errors_name_the_field(doc: Any, needle: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_expert_load(doc, _plan())
    assert needle in str(e.value)


def test_rebalance_clock() -> None:
    assert is_due(100.0, None, 30)
    assert not is_due(100.0, 80.0, 30)
    assert is_due(110.0, 80.0, 30)
    assert effective_interval(300, None) == 300.0
    assert effective_interval(300, 2.5) == 2.5
    assert parse_time("2026-01-01T00:00:30Z") == parse_time("2026-01-01T00:00:00Z") + 30  # type: ignore[operator]
    assert parse_time("yesterday") is None and parse_time(None) is None


def test_rebalance_event_message_has_the_figures() -> None:
    plan = _plan()
    skew = [[10.0, 1.0, 9.0, 1.0]] * 2  # experts 0 and 2 share GPU 0
    decision = should_rebalance(plan, skew, 0.05)
    assert decision.plan is not None
    msg = rebalanced_message(decision, 4)
    assert f"{decision.balancedness_before:.3f} -> {decision.balancedness_after:.3f}" in msg
    assert f"{decision.moved} expert(s) moved" in msg and "plan version 4" in msg


def test_rebalance_figures_restored_only_for_the_same_plan() -> None:
    plan = _plan()
    status = {
        "placement": {
            "balancedness": round(plan.balancedness, 4),
            "balancednessBefore": 1.7,
            "movedExperts": 5,
            "lastRebalanceTime": "2026-01-01T00:00:00Z",
        }
    }
    assert rebalance_figures(status, plan) == (1.7, 5, "2026-01-01T00:00:00Z")
    other = copy.deepcopy(status)
    other["placement"]["balancedness"] = 1.5
    assert rebalance_figures(other, plan) is None
    assert rebalance_figures({"placement": {"balancedness": 1.0}}, plan) is None
    assert rebalance_figures(None, plan) is None


class _NoKube:
    """A reconciler whose every cluster call fails the test: a skipped model touches
    nothing."""

    cluster = ClusterNetworks()

    @property
    def kube(self) -> Any:
        raise AssertionError("a model the rebalancer skips must not be read or patched")


def _ready_model(engine: str | None) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "manifests/samples/qwen3-vl-30b-a3b.yaml").read_text())
    doc["metadata"]["namespace"] = "ml"
    doc["spec"]["experts"]["rebalance"]["enabled"] = True
    if engine is None:
        del doc["spec"]["serving"]["engine"]  # a checkpoint: vllm by default
    doc["status"] = {
        "conditions": [{"type": "Ready", "status": "True"}],
        "placement": {"lastRebalanceTime": "2026-01-01T00:00:00Z"},
    }
    return doc


@pytest.mark.parametrize("engine", ["vllm", None])
def test_rebalance_skips_a_model_whose_engine_is_vllm(engine: str | None) -> None:
    rebalancer = Rebalancer(_NoKube(), RebalanceOptions())  # type: ignore[arg-type]
    doc = _ready_model(engine)
    now = parse_time("2026-01-02T00:00:00Z")  # long past the interval
    first = rebalancer.check(doc, now=now)
    assert first.action == "skipped"
    assert first.message.startswith("engine vllm re-places the experts itself (EPLB")
    (event,) = first.events
    assert (event.type, event.reason) == ("Normal", "RebalanceNotApplicable")
    again = rebalancer.check(doc, now=now + 600)  # type: ignore[operator]
    assert again.action == "skipped" and again.events == []  # said once
    rebalancer.forget("ml/qwen3-vl-30b-a3b")
    assert len(rebalancer.check(doc, now=now).events) == 1
