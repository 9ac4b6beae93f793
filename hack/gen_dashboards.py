#!/usr/bin/env python3
"""Generate the Grafana dashboards in charts/mmo/dashboards/ (one JSON file each).

The JSON files are committed; tests/chart/test_chart_dashboards.py fails when they differ
from what this script writes, so edit here and run `python hack/gen_dashboards.py`.

Every query uses only metrics listed in the cross-team contract (mmo_* serving metrics,
renamed from Ray's ray_mmo_* by the scrape config, and mmo_operator_* operator metrics),
or vLLM's engine metrics as Ray Serve LLM exports them (ray_vllm_*: names, labels and
buckets of vLLM 0.29 as a real `mmo up` exports them, tests/vllm/test_vllm_up.py;
tests/observability/fake_vllm_exporter.py lists them).
Every panel and variable reads the `datasource` variable: nothing names a datasource.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "charts" / "mmo" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Serving selectors: namespace/model come from the scrape labels (PodMonitor relabelling).
SEL = 'namespace=~"$namespace", model=~"$model"'
RI = "$__rate_interval"

Json = dict[str, Any]


def datasource_var() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
        "options": [],
    }


def query_var(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,
        "includeAll": True,
        # ".*" also matches series without the label (e.g. a local scrape with no model).
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "sort": 1,
        "regex": "",
        "options": [],
    }


def target(expr: str, legend: str = "", ref: str = "A", fmt: str = "time_series") -> Json:
    return {
        "refId": ref,
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": True,
        "format": fmt,
    }


class Layout:
    """Places panels on Grafana's 24-column grid, left to right, top to bottom."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> Json:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title: str) -> Json:
        """A row header across the grid; the panels placed after it belong to it."""
        self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel: Json = {
            "id": self.next_id,
            "type": "row",
            "title": title,
            "collapsed": False,
            "gridPos": self.place(24, 1),
            "panels": [],
        }
        self.next_id += 1
        return panel

    def panel(
        self,
        kind: str,
        title: str,
        description: str,
        targets: list[Json],
        *,
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        extra: Json | None = None,
    ) -> Json:
        panel: Json = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self.place(w, h),
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
        }
        if kind == "timeseries":
            panel["options"] = {
                "legend": {
                    "displayMode": "table",
                    "placement": "bottom",
                    "calcs": ["lastNotNull", "max"],
                },
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        if extra:
            panel.update(extra)
        self.next_id += 1
        return panel


def heatmap_extra(repeat: str | None = None) -> Json:
    extra: Json = {
        "options": {
            "calculate": False,
            "yAxis": {"axisPlacement": "left"},
            "color": {"mode": "scheme", "scheme": "Turbo", "steps": 64},
            "cellGap": 1,
            "tooltip": {"show": True, "yHistogram": False},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
        }
    }
    if repeat:
        extra.update({"repeat": repeat, "repeatDirection": "h", "maxPerRow": 2})
    return extra


def dashboard(
    uid: str, title: str, description: str, variables: list[Json], panels: list[Json]
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mmo"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [
            {"title": "mmo dashboards", "type": "dashboards", "tags": ["mmo"], "asDropdown": True}
        ],
        "templating": {"list": variables},
        "panels": panels,
    }


def serving_vars(extra: list[Json] | None = None) -> list[Json]:
    return [
        datasource_var(),
        query_var("namespace", "Namespace", "label_values(mmo_requests_total, namespace)"),
        query_var(
            "model", "Model", 'label_values(mmo_requests_total{namespace=~"$namespace"}, model)'
        ),
        *(extra or []),
    ]


def quantiles(metric: str, by: str, legend: str) -> list[Json]:
    return [
        target(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{SEL}}}[{RI}])))",
            f"p{int(q * 100)} {legend}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def overview() -> Json:
    lay = Layout()
    p = lay.panel
    panels = [
        p(
            "timeseries",
            "Latency p50 / p95 / p99 by route and modality",
            "Request latency quantiles from mmo_request_latency_seconds.",
            quantiles("mmo_request_latency_seconds", "route, modality", "{{route}} {{modality}}"),
            unit="s",
            w=24,
        ),
        p(
            "timeseries",
            "Requests per second by route and code",
            "Rate of mmo_requests_total.",
            [
                target(
                    f"sum by (route, code) (rate(mmo_requests_total{{{SEL}}}[{RI}]))",
                    "{{route}} {{code}}",
                )
            ],
            unit="reqps",
        ),
        p(
            "timeseries",
            "Errors: responses other than 2xx",
            "Rate of mmo_requests_total whose code is not 2xx, by route and code "
            "(4xx: rejected input or policy refusal, 5xx: server errors).",
            [
                target(
                    f'sum by (route, code) (rate(mmo_requests_total{{code!~"2..", {SEL}}}[{RI}]))',
                    "{{route}} {{code}}",
                )
            ],
            unit="reqps",
        ),
        p(
            "timeseries",
            "Batch size",
            "Requests per engine batch (mmo_batch_size): median, p95 and mean by route.",
            [
                *quantiles("mmo_batch_size", "route", "{{route}}")[:2],
                target(
                    f"sum by (route) (rate(mmo_batch_size_sum{{{SEL}}}[{RI}]))"
                    f" / sum by (route) (rate(mmo_batch_size_count{{{SEL}}}[{RI}]))",
                    "mean {{route}}",
                    "C",
                ),
            ],
        ),
        p(
            "timeseries",
            "Queue depth",
            "Requests waiting for a batch (mmo_queue_depth), by route.",
            [target(f"sum by (route) (mmo_queue_depth{{{SEL}}})", "{{route}}")],
        ),
        p(
            "timeseries",
            "Cache hit ratio",
            "mmo_cache_hits_total / (hits + mmo_cache_misses_total).",
            [
                target(
                    f"sum(rate(mmo_cache_hits_total{{{SEL}}}[{RI}]))"
                    f" / (sum(rate(mmo_cache_hits_total{{{SEL}}}[{RI}]))"
                    f" + sum(rate(mmo_cache_misses_total{{{SEL}}}[{RI}])))",
                    "hit ratio",
                )
            ],
            unit="percentunit",
        ),
        p(
            "timeseries",
            "Latency p95 by cache outcome and mode",
            "p95 of mmo_request_latency_seconds split by cache (hit/miss) and isolation mode.",
            [
                target(
                    "histogram_quantile(0.95, sum by (cache, mode, le) "
                    f"(rate(mmo_request_latency_seconds_bucket{{{SEL}}}[{RI}])))",
                    "{{cache}} {{mode}}",
                )
            ],
            unit="s",
        ),
        p(
            "timeseries",
            "Generated tokens per second",
            "Rate of mmo_generated_tokens_total.",
            [target(f"sum(rate(mmo_generated_tokens_total{{{SEL}}}[{RI}]))", "tokens/s")],
            unit="short",
        ),
        *engine_row(lay),
    ]
    return dashboard(
        "mmo-overview",
        "mmo / Overview",
        "Latency, throughput, errors, batching, queueing and cache of mmo models.",
        serving_vars(),
        panels,
    )


VLLM = "ray_vllm_"


def engine_row(lay: Layout) -> list[Json]:
    """The Overview's row of vLLM engine panels (engine vllm; empty for engine mmo)."""
    p = lay.panel
    return [
        lay.row("Engine (vLLM)"),
        p(
            "timeseries",
            "Time to first token p95",
            "p95 of vLLM's time to first token (queueing and prefill); "
            "MmoTimeToFirstTokenAboveTarget compares it with the model's latency target.",
            [
                target(
                    f"histogram_quantile(0.95, sum by (model, le) "
                    f"(rate({VLLM}time_to_first_token_seconds_bucket{{{SEL}}}[{RI}])))",
                    "{{model}}",
                )
            ],
            unit="s",
            w=8,
        ),
        p(
            "timeseries",
            "KV-cache usage (fullest rank)",
            "vLLM's KV-cache usage of the fullest data-parallel rank; "
            "MmoEngineKvCacheSaturated fires when it stays full while requests wait.",
            [
                target(
                    f"max by (model) ({VLLM}kv_cache_usage_perc{{{SEL}}})",
                    "{{model}}",
                )
            ],
            unit="percentunit",
            w=8,
        ),
        p(
            "timeseries",
            "Engine requests running and waiting",
            "Requests in vLLM's batches and waiting for KV-cache room, over all ranks.",
            [
                target(f"sum({VLLM}num_requests_running{{{SEL}}})", "running"),
                target(f"sum({VLLM}num_requests_waiting{{{SEL}}})", "waiting", "B"),
            ],
            w=8,
        ),
    ]


def engine() -> Json:
    lay = Layout()
    p = lay.panel
    by_rank = "ReplicaId"
    running = f"{VLLM}num_requests_running"
    panels = [
        p(
            "timeseries",
            "Time to first token p50 / p95 / p99",
            "vLLM's time from arrival to the first generated token (queueing and prefill).",
            quantiles(f"{VLLM}time_to_first_token_seconds", "model", "{{model}}"),
            unit="s",
        ),
        p(
            "timeseries",
            "Inter-token latency p50 / p95 / p99",
            "vLLM's time between two generated tokens of a request (decode speed).",
            quantiles(f"{VLLM}inter_token_latency_seconds", "model", "{{model}}"),
            unit="s",
        ),
        p(
            "timeseries",
            "End-to-end request latency p50 / p95 / p99",
            "vLLM's time from arrival to the last token (the gateway adds its own before it).",
            quantiles(f"{VLLM}e2e_request_latency_seconds", "model", "{{model}}"),
            unit="s",
        ),
        p(
            "timeseries",
            "Queue time p95 by rank",
            "p95 of the time requests wait in vLLM's scheduler before running, per "
            "data-parallel rank (Serve replica).",
            [
                target(
                    f"histogram_quantile(0.95, sum by ({by_rank}, le) "
                    f"(rate({VLLM}request_queue_time_seconds_bucket{{{SEL}}}[{RI}])))",
                    "{{ReplicaId}}",
                )
            ],
            unit="s",
        ),
        p(
            "timeseries",
            "KV-cache usage by rank",
            "Fraction of each data-parallel rank's KV-cache blocks in use "
            "(vllm:kv_cache_usage_perc); near 1 with requests waiting, the rank preempts.",
            [
                target(
                    f"max by ({by_rank}) ({VLLM}kv_cache_usage_perc{{{SEL}}})",
                    "{{ReplicaId}}",
                )
            ],
            unit="percentunit",
        ),
        p(
            "timeseries",
            "Requests running and waiting by rank",
            "Requests in each rank's running batch and in its waiting queue.",
            [
                target(
                    f"sum by ({by_rank}) ({VLLM}num_requests_running{{{SEL}}})",
                    "running {{ReplicaId}}",
                ),
                target(
                    f"sum by ({by_rank}) ({VLLM}num_requests_waiting{{{SEL}}})",
                    "waiting {{ReplicaId}}",
                    "B",
                ),
            ],
        ),
        p(
            "timeseries",
            "Prompt and generation tokens per second",
            "Prefill tokens processed and tokens generated by the engine, over all ranks.",
            [
                target(f"sum(rate({VLLM}prompt_tokens_total{{{SEL}}}[{RI}]))", "prompt"),
                target(
                    f"sum(rate({VLLM}generation_tokens_total{{{SEL}}}[{RI}]))", "generation", "B"
                ),
            ],
        ),
        p(
            "timeseries",
            "Preemptions per second by rank",
            "Requests the scheduler evicted to free KV-cache blocks (recomputed later): "
            "a KV cache too small for the load. Ray exports the counter only after a "
            "rank's first preemption: until then the rank shows 0.",
            [
                target(
                    f"sum by ({by_rank}) (rate({VLLM}num_preemptions_total{{{SEL}}}[{RI}]))"
                    f" or sum by ({by_rank}) ({running}{{{SEL}}}) * 0",
                    "{{ReplicaId}}",
                )
            ],
            unit="ops",
        ),
        p(
            "timeseries",
            "Finished requests by reason",
            "vllm:request_success by finished_reason (stop, length, abort, ...).",
            [
                target(
                    f"sum by (finished_reason) (rate({VLLM}request_success_total{{{SEL}}}[{RI}]))",
                    "{{finished_reason}}",
                )
            ],
            unit="reqps",
            w=24,
        ),
    ]
    return dashboard(
        "mmo-engine",
        "mmo / Engine",
        "The vLLM engine of models with engine vllm: latency to the first token and between "
        "tokens, KV-cache usage, scheduler queues, token throughput, preemptions.",
        [
            datasource_var(),
            query_var("namespace", "Namespace", f"label_values({running}, namespace)"),
            query_var(
                "model", "Model", f'label_values({running}{{namespace=~"$namespace"}}, model)'
            ),
        ],
        panels,
    )


def experts() -> Json:
    lay = Layout()
    p = lay.panel
    layer_sel = f'{SEL}, layer=~"$layer"'
    panels = [
        p(
            "heatmap",
            "GPU load, layer $layer",
            "Tokens per second routed to each GPU rank (mmo_expert_tokens_total by rank).",
            [
                target(
                    f"sum by (rank) (rate(mmo_expert_tokens_total{{{layer_sel}}}[{RI}]))",
                    "{{rank}}",
                    fmt="time_series",
                )
            ],
            extra=heatmap_extra("layer"),
        ),
        p(
            "heatmap",
            "Expert load, layer $layer",
            "Tokens per second routed to each logical expert (mmo_expert_tokens_total by expert).",
            [
                target(
                    f"sum by (expert) (rate(mmo_expert_tokens_total{{{layer_sel}}}[{RI}]))",
                    "{{expert}}",
                    fmt="time_series",
                )
            ],
            extra=heatmap_extra("layer"),
        ),
        p(
            "timeseries",
            "Balancedness by layer (max / mean GPU load)",
            "mmo_expert_balancedness: 1.0 is a perfect spread; the alert fires above the "
            "chart's threshold for 10 minutes.",
            [target(f"max by (layer) (mmo_expert_balancedness{{{layer_sel}}})", "layer {{layer}}")],
            unit="none",
            w=16,
        ),
        p(
            "stat",
            "Placement plans applied",
            "mmo_rebalances_total: plans applied by the serving engine (the initial one included).",
            [target(f"sum(mmo_rebalances_total{{{SEL}}})", "plans")],
            w=8,
        ),
        p(
            "timeseries",
            "Tokens per second by layer",
            "Routed tokens per MoE layer (sum of mmo_expert_tokens_total over experts).",
            [
                target(
                    f"sum by (layer) (rate(mmo_expert_tokens_total{{{layer_sel}}}[{RI}]))",
                    "layer {{layer}}",
                )
            ],
            w=24,
        ),
    ]
    layer = query_var(
        "layer",
        "Layer",
        'label_values(mmo_expert_tokens_total{namespace=~"$namespace", model=~"$model"}, layer)',
    )
    return dashboard(
        "mmo-experts",
        "mmo / Experts",
        "Expert-parallel load: per-GPU and per-expert heatmaps per layer, balancedness, "
        "rebalances.",
        serving_vars([layer]),
        panels,
    )


def isolation() -> Json:
    lay = Layout()
    p = lay.panel
    sel = f'{SEL}, mode=~"$mode"'
    decisions = "mmo_policy_decisions_total"
    panels = [
        p(
            "timeseries",
            "Decisions by mode, class and outcome",
            "Rate of gateway decisions (mmo_policy_decisions_total): local, offload, refuse, "
            "fallback.",
            [
                target(
                    f"sum by (mode, class, decision) (rate({decisions}{{{sel}}}[{RI}]))",
                    "{{mode}} {{class}} {{decision}}",
                )
            ],
            unit="reqps",
            w=24,
        ),
        p(
            "timeseries",
            "Offloads and fallbacks by data class",
            "Requests sent to the hybrid cloud endpoint (offload) or kept local after the "
            "endpoint failed (fallback).",
            [
                target(
                    f"sum by (class, decision) (rate({decisions}"
                    f'{{decision=~"offload|fallback", {sel}}}[{RI}]))',
                    "{{decision}} {{class}}",
                )
            ],
            unit="reqps",
        ),
        p(
            "timeseries",
            "Refusals by mode and class",
            "Requests the isolation policy refused (decision=refuse).",
            [
                target(
                    f'sum by (mode, class) (rate({decisions}{{decision="refuse", {sel}}}[{RI}]))',
                    "{{mode}} {{class}}",
                )
            ],
            unit="reqps",
        ),
        p(
            "timeseries",
            "PII redactions by kind",
            "Rate of mmo_pii_redactions_total: PII removed before data left the cluster.",
            [target(f"sum by (kind) (rate(mmo_pii_redactions_total{{{SEL}}}[{RI}]))", "{{kind}}")],
            unit="ops",
        ),
        p(
            "stat",
            "Share processed locally",
            "Fraction of decisions that kept the request in the cluster (decision=local).",
            [
                target(
                    f'sum(rate({decisions}{{decision="local", {sel}}}[{RI}]))'
                    f" / sum(rate({decisions}{{{sel}}}[{RI}]))",
                    "local",
                )
            ],
            unit="percentunit",
        ),
    ]
    mode = query_var(
        "mode",
        "Isolation mode",
        'label_values(mmo_policy_decisions_total{namespace=~"$namespace", model=~"$model"}, mode)',
    )
    return dashboard(
        "mmo-isolation",
        "mmo / Isolation",
        "Data-isolation policy at runtime: decisions by mode and class, offloads, refusals, "
        "redactions.",
        serving_vars([mode]),
        panels,
    )


def operator() -> Json:
    lay = Layout()
    p = lay.panel
    sel = 'job=~"$job"'
    panels = [
        p(
            "timeseries",
            "Reconciles per second",
            "Rate of reconciles (count of mmo_operator_reconcile_duration_seconds).",
            [
                target(
                    f"sum(rate(mmo_operator_reconcile_duration_seconds_count{{{sel}}}[{RI}]))",
                    "reconciles/s",
                )
            ],
            unit="ops",
        ),
        p(
            "timeseries",
            "Reconcile duration p50 / p95 / p99",
            "Quantiles of mmo_operator_reconcile_duration_seconds.",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(mmo_operator_reconcile_duration_seconds_bucket{{{sel}}}[{RI}])))",
                    f"p{int(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            unit="s",
        ),
        p(
            "timeseries",
            "Reconcile errors by reason",
            "Rate of mmo_operator_reconcile_errors_total by reason.",
            [
                target(
                    f"sum by (reason) (rate(mmo_operator_reconcile_errors_total{{{sel}}}[{RI}]))",
                    "{{reason}}",
                )
            ],
            unit="ops",
        ),
        p(
            "timeseries",
            "MultimodalModels by Ready state",
            "mmo_operator_objects by its ready label.",
            [target(f"sum by (ready) (mmo_operator_objects{{{sel}}})", "ready={{ready}}")],
        ),
        p(
            "timeseries",
            "MultimodalModels not reconciled",
            "mmo_operator_objects_unreconciled: models whose last reconcile failed to write "
            "(Reconciled=False, the API error in its message; retried with backoff). Their "
            "Ready state still follows the serving side. MmoModelsUnreconciled fires after "
            "15 minutes.",
            [target(f"sum(mmo_operator_objects_unreconciled{{{sel}}})", "not reconciled")],
        ),
        p(
            "stat",
            "Rebalances triggered by the operator",
            "mmo_operator_rebalances_total: new placement plans the operator wrote.",
            [target(f"sum(mmo_operator_rebalances_total{{{sel}}})", "rebalances")],
            h=5,
        ),
        p(
            "table",
            "p95 latency target per model",
            "mmo_operator_model_latency_target_seconds: each model's "
            "spec.autoscaling.latencyTargetMs, which MmoLatencyP95AboveTarget compares with "
            "(unless the chart's prometheusRule.latencyTargetsMs overrides it).",
            [
                target(
                    "max by (namespace, model) "
                    f"(mmo_operator_model_latency_target_seconds{{{sel}}})",
                    "{{namespace}}/{{model}}",
                    fmt="table",
                )
            ],
            unit="s",
            h=5,
        ),
    ]
    job = query_var("job", "Operator job", "label_values(mmo_operator_objects, job)")
    return dashboard(
        "mmo-operator",
        "mmo / Operator",
        "The mmo operator: reconciles, their duration and errors, models by Ready state and "
        "models not reconciled.",
        [datasource_var(), job],
        panels,
    )


DASHBOARDS = {
    "overview": overview,
    "engine": engine,
    "experts": experts,
    "isolation": isolation,
    "operator": operator,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {
        f"{name}.json": json.dumps(build(), indent=2, sort_keys=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
