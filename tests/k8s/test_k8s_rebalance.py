"""Live expert rebalancing: the operator's rebalance timer against the strict emulator.

A fake Serve endpoint on loopback answers ``GET /v1/expert-load`` in the engine's JSON
(``ExpertLoad.to_json_dict()`` plus the plan the replica runs) with skewed load; the
operator runs with ``--expert-load-url`` pointing at it, a 0.5 s timer and the hidden
``--rebalance-interval-override`` (the CRD's minimum intervalSeconds is 30).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from operator_harness import (
    CONFIGMAPS,
    MMM,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    model_doc,
    wait_for,
)

from mmo_operator.builders.app_args import plan_and_app_args
from mmo_operator.validation import validate
from mmo_serving.config import PlacementPlan
from ports import free_port

StartOperator = Callable[..., OperatorProcess]
INTERVAL = 2.0  # --rebalance-interval-override
HASH = "serving.mmo.dev/cluster-hash"


def _rebalancing_doc(engine: str = "mmo") -> dict[str, Any]:
    """The tiny model with live rebalancing on: served by the built-in engine (the
    rebalancer's own), or by vLLM (a checkpoint: the tiny file as it is)."""
    doc = model_doc()
    if engine == "mmo":
        doc["spec"]["model"] = {
            "source": "builtin://shapes-moe",
            "modalities": ["text", "image"],
            "dtype": "float32",
        }
    doc["spec"]["experts"] = {
        "placement": "balanced",
        "redundantExperts": 8,
        "rebalance": {"enabled": True, "intervalSeconds": 30, "minImprovement": 0.05},
    }
    return doc


def _zipf_loads(layers: int, experts: int) -> list[list[int]]:
    """Skewed routing: expert e of every layer gets ~1/(e+1) of the tokens."""
    return [[int(12000 / (e + 1)) for e in range(experts)] for _ in range(layers)]


def _window(plan: PlacementPlan, loads: list[list[int]]) -> list[list[list[int]]]:
    """Per (layer, expert, rank) tokens as the engine counts them under ``plan``: an
    expert's tokens split evenly over the GPUs that hold a copy of it."""
    out = []
    for layer, lp in enumerate(plan.layers):
        rows = [[0] * plan.num_gpus for _ in range(plan.num_experts)]
        for expert in range(plan.num_experts):
            gpus = [s // plan.slots_per_gpu for s, e in enumerate(lp.slots) if e == expert]
            share, rest = divmod(loads[layer][expert], len(gpus))
            for i, gpu in enumerate(gpus):
                rows[expert][gpu] += share + (1 if i < rest else 0)
        out.append(rows)
    return out


class LoadServer:
    """``GET /v1/expert-load`` as the Serve app answers it; ``fail`` makes it answer 503."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.doc: dict[str, Any] | None = None
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    outer.requests += 1
                    doc = copy.deepcopy(outer.doc)
                if doc is None or not self.path.endswith("/v1/expert-load"):
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{namespace}}/{{name}}/v1/expert-load"

    def serve(self, plan: PlacementPlan | None, loads: list[list[int]], version: int) -> None:
        """Play a replica that runs ``plan`` (plan version ``version``) and saw ``loads``."""
        if plan is None:
            with self.lock:
                self.doc = None
            return
        window = _window(plan, loads)
        doc = {
            "numLayers": len(plan.layers),
            "numExperts": plan.num_experts,
            "numRanks": plan.num_gpus,
            "planVersion": version,
            "tokens": window,
            "window": window,
            "balancedness": [lp.balancedness for lp in plan.layers],
            "model": "tiny",
            "placement": plan.model_dump(mode="json", by_alias=True),
        }
        with self.lock:
            self.doc = doc

    def count(self) -> int:
        with self.lock:
            return self.requests

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def load_server() -> Iterator[LoadServer]:
    server = LoadServer()
    try:
        yield server
    finally:
        server.close()


def _rebalances_total(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("mmo_operator_rebalances_total "):
            return float(line.split()[1])
    return None


def _operator(
    start: StartOperator, server: LoadServer, interval: float, *extra: str
) -> OperatorProcess:
    return start(
        *extra,
        "--expert-load-url",
        server.url_template,
        "--expert-load-timeout",
        "2",
        "--rebalance-check-seconds",
        "0.5",
        "--rebalance-interval-override",
        str(interval),
    )


def _cm_plan(cluster: Cluster) -> PlacementPlan:
    cm = cluster.get(CONFIGMAPS, "tiny-placement")
    return PlacementPlan.model_validate_json(cm["data"]["placement.json"])


def _served_plan(rs: dict[str, Any]) -> PlacementPlan:
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    user_config = serve["applications"][0]["deployments"][0]["user_config"]
    return PlacementPlan.model_validate(user_config["placement"])


def _events(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events() if e.get("reason") == reason]


def _ready(cluster: Cluster) -> bool:
    return (cluster.condition("tiny", "Ready") or {}).get("status") == "True"


def _deploy_ready(cluster: Cluster, engine: str = "mmo") -> dict[str, Any]:
    cluster.create(MMM, _rebalancing_doc(engine))
    rs = wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.play_kuberay("tiny")
    wait_for("Ready", lambda: _ready(cluster))
    result: dict[str, Any] = rs
    return result


def test_skewed_load_rebalances_in_place_once(
    cluster: Cluster, start_operator: StartOperator, load_server: LoadServer
) -> None:
    initial, _ = plan_and_app_args(validate(_rebalancing_doc()))
    loads = _zipf_loads(len(initial.layers), initial.num_experts)
    load_server.serve(initial, loads, version=0)
    metrics_port = free_port()
    proc = _operator(start_operator, load_server, INTERVAL, "--metrics-port", str(metrics_port))
    before = _deploy_ready(cluster)
    assert _rebalances_total(metrics_port) == 0.0
    assert _cm_plan(cluster) == initial
    assert _served_plan(before) == initial

    new = wait_for(
        "a rebalanced plan in the placement ConfigMap",
        lambda: (p := _cm_plan(cluster)) != initial and p,
        timeout=40,
    )
    assert sum(lp.moved for lp in new.layers) > 0
    after = wait_for(
        "the new plan in serveConfigV2's user_config",
        lambda: (rs := cluster.get(RAYSERVICES, "tiny")) and _served_plan(rs) == new and rs,
    )
    # in place: same RayService object, same Ray cluster (KubeRay's lightweight update)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["annotations"][HASH] == before["metadata"]["annotations"][HASH]
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]

    placement = wait_for(
        "status.placement with the rebalance figures",
        lambda: (
            (p := (cluster.get(MMM, "tiny").get("status") or {}).get("placement") or {})
            and "balancednessBefore" in p
            and p
        ),
    )
    print("status.placement:", placement)
    assert placement["balancednessBefore"] > placement["balancedness"]
    assert placement["balancedness"] == round(new.balancedness, 4)
    assert placement["movedExperts"] == sum(lp.moved for lp in new.layers)
    assert placement["lastRebalanceTime"].endswith("Z")
    [event] = wait_for("the Rebalanced event", lambda: _events(cluster, "Rebalanced"))
    assert event["type"] == "Normal"
    assert f"{placement['balancednessBefore']:.3f} -> " in event["message"]
    assert f"{placement['movedExperts']} expert(s) moved" in event["message"]
    assert _events(cluster, "ServeConfigUpdated"), "the RayService was updated in place"

    # Serve applies the plan (plan version 1) and sees the same skew again: the
    # improvement left is below minImprovement, so the next checks keep the plan.
    load_server.serve(new, loads, version=1)
    mark = cluster.request_mark()
    seen = load_server.count()
    wait_for("two more checks", lambda: load_server.count() >= seen + 2, timeout=30)
    assert _cm_plan(cluster) == new
    assert len(_events(cluster, "Rebalanced")) == 1
    assert cluster.writes_since(mark) == [], "a kept plan writes nothing"
    assert _rebalances_total(metrics_port) == 1.0
    assert not _events(cluster, "ExpertLoadUnavailable")
    assert proc.alive()
    assert _ready(cluster)

    # a restarted operator keeps the rebalanced plan and the figures in the status
    proc.stop()
    again = _operator(start_operator, load_server, INTERVAL)
    wait_for("the resume", lambda: "Resuming is processed" in again.log(), timeout=30)
    status = cluster.get(MMM, "tiny")["status"]
    assert status["placement"] == placement
    assert _cm_plan(cluster) == new


def test_waits_until_the_replica_runs_the_plan_in_force(
    cluster: Cluster, start_operator: StartOperator, load_server: LoadServer
) -> None:
    """While the replica still runs the old plan (KubeRay/Serve catching up), its load
    says nothing about the new one: the operator waits, then rebalances on the new
    plan's own load once the replica reports it."""
    initial, _ = plan_and_app_args(validate(_rebalancing_doc()))
    loads = _zipf_loads(len(initial.layers), initial.num_experts)
    load_server.serve(initial, loads, version=0)
    _operator(start_operator, load_server, INTERVAL)
    _deploy_ready(cluster)
    new = wait_for("a rebalance", lambda: (p := _cm_plan(cluster)) != initial and p, timeout=40)
    # the traffic turns around (the cold experts become the hot ones), still on the old plan
    reverse = [row[::-1] for row in loads]
    load_server.serve(initial, reverse, version=0)
    seen = load_server.count()
    wait_for("two more checks", lambda: load_server.count() >= seen + 2, timeout=30)
    assert _cm_plan(cluster) == new, "no decision on load measured under another plan"
    assert len(_events(cluster, "Rebalanced")) == 1
    # the replica applies the plan and reports the reversed load under it: rebalance
    load_server.serve(new, reverse, version=1)
    third = wait_for("a second rebalance", lambda: (p := _cm_plan(cluster)) != new and p)
    assert third.balancedness < 1.2
    wait_for("two Rebalanced events", lambda: len(_events(cluster, "Rebalanced")) == 2)


def test_endpoint_down_warns_once_per_interval_and_stays_ready(
    cluster: Cluster, start_operator: StartOperator, load_server: LoadServer
) -> None:
    interval = 6.0
    load_server.serve(None, [], version=0)  # answers 503
    proc = _operator(start_operator, load_server, interval)
    _deploy_ready(cluster)
    initial = _cm_plan(cluster)
    first = wait_for("a failed read", lambda: load_server.count() >= 1, timeout=40)
    assert first
    started = time.monotonic()
    wait_for("retries on the next ticks", lambda: load_server.count() >= 4, timeout=30)
    warnings = wait_for("the warning", lambda: _events(cluster, "ExpertLoadUnavailable"))
    elapsed = time.monotonic() - started
    assert warnings[0]["type"] == "Warning"
    assert "HTTP 503" in warnings[0]["message"] and "placement kept" in warnings[0]["message"]
    assert str(load_server.port) in warnings[0]["message"], "the message names the URL"
    # every tick retries, but the warning repeats at most once per interval
    assert len(warnings) < load_server.count()
    assert len(warnings) <= 1 + int(elapsed // interval)

    load_server.close()  # now nothing listens: connection refused
    seen_warnings = len(_events(cluster, "ExpertLoadUnavailable"))
    wait_for(
        "a warning for the refused connection",
        lambda: len(_events(cluster, "ExpertLoadUnavailable")) > seen_warnings,
        timeout=30,
    )
    refused = _events(cluster, "ExpertLoadUnavailable")[-1]["message"]
    assert "refused" in refused.lower(), refused
    assert proc.alive(), "the operator survives an unreachable endpoint"
    assert _ready(cluster)
    assert _cm_plan(cluster) == initial
    assert not _events(cluster, "Rebalanced")


def test_a_model_served_by_vllm_is_left_to_vllm(
    cluster: Cluster, start_operator: StartOperator, load_server: LoadServer
) -> None:
    """vLLM re-places its experts itself (EPLB) and its front reports no expert load:
    the timer reads nothing, changes nothing, and says why once."""
    initial, _ = plan_and_app_args(validate(_rebalancing_doc("vllm")))
    load_server.serve(initial, _zipf_loads(len(initial.layers), initial.num_experts), 0)
    _operator(start_operator, load_server, INTERVAL)
    _deploy_ready(cluster, "vllm")
    [event] = wait_for("the event", lambda: _events(cluster, "RebalanceNotApplicable"))
    assert event["type"] == "Normal"
    assert event["message"].startswith("engine vllm re-places the experts itself (EPLB")
    mark = cluster.request_mark()
    time.sleep(3 * INTERVAL)  # several due checks pass
    assert load_server.count() == 0, "the expert load of a vLLM model is never read"
    assert len(_events(cluster, "RebalanceNotApplicable")) == 1
    assert cluster.writes_since(mark) == [] and _cm_plan(cluster) == initial
    assert not _events(cluster, "ExpertLoadUnavailable") and _ready(cluster)
