"""Dashboards and alert rules use only metrics that mmo exports (the contracts list, as named
in serving/mmo_serving/metrics.py and operator/mmo_operator/metrics.py) or that vLLM exports
through Ray (ray_vllm_*: the families fake_vllm_exporter.py serves, which
test_dashboards_harness.py sees scraped by a real Prometheus)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "charts" / "mmo" / "dashboards").glob("*.json"))
RULES = sorted((REPO / "charts" / "mmo" / "rules").glob("*.yaml"))
METRIC_MODULES = [
    REPO / "serving" / "mmo_serving" / "metrics.py",
    REPO / "operator" / "mmo_operator" / "metrics.py",
]
# Metrics of the contract (the cross-team list); metrics.py must name each of them.
CONTRACT = {
    "mmo_request_latency_seconds": "histogram",
    "mmo_requests_total": "counter",
    "mmo_batch_size": "histogram",
    "mmo_queue_depth": "gauge",
    "mmo_generated_tokens_total": "counter",
    "mmo_cache_hits_total": "counter",
    "mmo_cache_misses_total": "counter",
    "mmo_expert_tokens_total": "counter",
    "mmo_expert_balancedness": "gauge",
    "mmo_rebalances_total": "counter",
    "mmo_policy_decisions_total": "counter",
    "mmo_pii_redactions_total": "counter",
    "mmo_operator_reconcile_duration_seconds": "histogram",
    "mmo_operator_reconcile_errors_total": "counter",
    "mmo_operator_objects": "gauge",
    "mmo_operator_objects_unreconciled": "gauge",
    "mmo_operator_rebalances_total": "counter",
    "mmo_operator_model_latency_target_seconds": "gauge",
}
PROMETHEUS_OWN = {"up"}
METRIC = re.compile(r"(?<![:\w])([a-zA-Z_][a-zA-Z0-9_]*)\s*(?=\{|\[|\)|$|\s)")
MMO = re.compile(r"(?<![:\w])(mmo_[a-z0-9_]+)")
RECORDED = re.compile(r"(?<![\w])(mmo:[a-z0-9_:]+)")
VLLM = re.compile(r"(?<![:\w])(ray_vllm_[a-z0-9_]+)")
# What the engine dashboards must show (vLLM's names): latency to the first token, between
# tokens and end to end, KV-cache usage, running and waiting requests, prompt and
# generation tokens, preemptions.
ENGINE_SHOWN = {
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_preemptions",
}


def dashboard_queries(path: Path) -> Iterator[str]:
    board = json.loads(path.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            yield var["definition"]


def rule_exprs(path: Path) -> Iterator[str]:
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            yield str(rule["expr"])


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and CONTRACT.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return name


def exported_names() -> set[str]:
    names: set[str] = set()
    for module in METRIC_MODULES:
        names |= set(re.findall(r"[\"'](mmo_[a-z0-9_]+)[\"']", module.read_text()))
    return names


def used_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    sources: list[tuple[Path, Any]] = [(p, dashboard_queries(p)) for p in DASHBOARDS]
    sources += [(p, rule_exprs(p)) for p in RULES]
    for path, exprs in sources:
        for expr in exprs:
            for name in MMO.findall(expr):
                used.setdefault(base_name(name), set()).add(path.name)
    return used


def test_metric_modules_name_every_contract_metric() -> None:
    assert set(CONTRACT) <= exported_names()


def test_dashboards_and_rules_use_only_exported_metrics() -> None:
    used = used_metrics()
    unknown = {name: files for name, files in used.items() if name not in CONTRACT}
    assert unknown == {}, "metrics no one exports"
    assert set(used) <= exported_names()


def test_every_contract_metric_is_shown_somewhere() -> None:
    shown = {
        name for name, files in used_metrics().items() if any(f.endswith(".json") for f in files)
    }
    assert set(CONTRACT) - shown == set(), "exported but on no dashboard"


def test_histograms_are_queried_through_their_series() -> None:
    """A histogram's name alone selects nothing in Prometheus: use _bucket/_sum/_count."""
    for path in DASHBOARDS:
        for expr in dashboard_queries(path):
            for name in MMO.findall(expr):
                if CONTRACT.get(name) == "histogram":
                    raise AssertionError(f"{path.name}: {name} without a series suffix in {expr}")


def test_rules_use_only_mmo_and_prometheus_metrics() -> None:
    recorded = {
        str(rule["record"])
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    # Recorded by the chart only when per-model targets are set (templates/prometheusrule.yaml).
    template = (REPO / "charts" / "mmo" / "templates" / "prometheusrule.yaml").read_text()
    recorded |= set(re.findall(r"record: (mmo:[a-z0-9_:]+)", template))
    for path in RULES:
        for expr in rule_exprs(path):
            for name in RECORDED.findall(expr):
                assert name in recorded, f"{path.name}: {name} is recorded by no rule"
            bare = VLLM.sub(" ", RECORDED.sub(" ", expr))
            for name in MMO.findall(bare):
                assert base_name(name) in CONTRACT, f"{path.name}: {name}"
            others = {
                m
                for m in METRIC.findall(bare)
                if not m.startswith("mmo_") and m not in PROMQL_WORDS and not m.isupper()
            }
            assert others <= PROMETHEUS_OWN, f"{path.name}: unknown metrics {others}"


def used_vllm_series() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    sources: list[tuple[Path, Any]] = [(p, dashboard_queries(p)) for p in DASHBOARDS]
    sources += [(p, rule_exprs(p)) for p in RULES]
    for path, exprs in sources:
        for expr in exprs:
            for name in VLLM.findall(expr):
                used.setdefault(name, set()).add(path.name)
    return used


def test_dashboards_and_rules_use_only_vllm_series_the_exporter_serves(
    vllm_exporter: ModuleType,
) -> None:
    served = vllm_exporter.exported_series_names()
    unknown = {name: files for name, files in used_vllm_series().items() if name not in served}
    assert unknown == {}, "ray_vllm_* series vLLM 0.29 does not export (or not under that name)"
    for name, files in used_vllm_series().items():
        if served[name] == "histogram":
            assert name.endswith(("_bucket", "_sum", "_count")), (name, files)


def test_the_engine_metrics_are_shown_on_the_overview_and_engine_dashboards(
    vllm_exporter: ModuleType,
) -> None:
    used = used_vllm_series()
    for board in ("overview.json", "engine.json"):
        assert any(board in files for files in used.values()), board
    shown = {
        family
        for family in vllm_exporter.VLLM_FAMILIES
        for name, files in used.items()
        if name.startswith(vllm_exporter.ray_name(family))
        and name[len(vllm_exporter.ray_name(family)) :] in ("", "_total", "_bucket", "_sum")
        and "engine.json" in files
    }
    assert ENGINE_SHOWN - shown == set(), "engine metrics on no Engine dashboard panel"


PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "on",
    "or",
    "and",
    "unless",
    "without",
    "rate",
    "increase",
    "histogram_quantile",
    "scalar",
    "vector",
    "present_over_time",
    "group_left",
    "group_right",
    "ignoring",
    "bool",
    "le",
    "namespace",
    "model",
    "route",
    "layer",
    "job",
    "instance",
    "decision",
    "reason",
    "mode",
    "ready",
}
