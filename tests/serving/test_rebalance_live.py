"""Live rebalancing end to end: a rebalance applied to a running engine without a restart, and
the balancedness improving on skewed traffic.

The Serve app runs on the session's local Ray with the expert-parallel engine (4 ranks
on 4 logical GPUs, gloo, the built-in architecture with tiny random weights). The test
plays the operator and KubeRay with their own code: the load is read from
``GET /v1/expert-load`` and parsed as the operator's timer does, the decision is
``should_rebalance``, the new ``user_config`` is the operator's RayService builder's
(``deployment_config``), and it reaches the app as KubeRay hands serveConfigV2 to Serve:
``serve.run`` of the same application and code version with only ``user_config``
changed (a lightweight update: the replica's ``reconfigure``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import mmo_engine_toy as toy  # loaded by conftest.py
import numpy as np
import pytest
from ray import serve

from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_operator.builders.app_args import build_app_args, plan_and_app_args
from mmo_operator.builders.rayservice import build_serve_config, deployment_config
from mmo_operator.planning.rebalance_decision import should_rebalance
from mmo_operator.planning.rebalance_load import parse_expert_load
from mmo_operator.validation import validate
from mmo_serving.builtin_engine import BuiltinEngineFactory
from mmo_serving.config import AppArgs, PlacementPlan
from mmo_serving.images import encode_data_url
from ports import free_port

RANKS = 4
TINY = toy.TINY_SHAPES
SPEC = {
    "apiVersion": "serving.mmo.dev/v1alpha1",
    "kind": "MultimodalModel",
    "metadata": {"name": "live", "namespace": "ml"},
    "spec": {
        "model": {
            "source": "pvc://models/live",
            "architecture": {
                "totalParams": 2_000_000_000,
                "activeParams": 500_000_000,
                "numLayers": TINY["n_layers"],
                "numExperts": TINY["n_experts"],
                "expertsPerToken": TINY["top_k"],
            },
            "modalities": ["text", "image"],
            "dtype": "float32",
        },
        "resources": {"gpuType": "A100-80GB", "gpusPerNode": RANKS},
        "experts": {
            "placement": "balanced",
            "redundantExperts": 4,  # 8 experts + 4 copies = 3 slots on each of 4 GPUs
            "rebalance": {"enabled": True, "intervalSeconds": 30, "minImprovement": 0.05},
        },
        "batching": {"maxBatchSize": 8, "batchWaitTimeoutMs": 5},
        "cache": {"enabled": False},  # every request must reach the engine
        "isolation": {"mode": "private"},
    },
}
# skewed traffic: the same question again and again routes to the same few experts
PROMPT = "what colour is the circle?"
REQUESTS = 12


async def tiny_engine(args: AppArgs) -> Any:
    """The expert-parallel engine on the tiny model (the app's engine seam)."""
    from mmo_serving.engine import ExpertParallelEngine
    from mmo_serving.engine.builtin_runner import ModelSource

    engine = ExpertParallelEngine(args, ModelSource("tiny://", tiny=TINY, seed=3))
    await engine.ready()
    return engine


def _rank_actors() -> dict[str, int]:
    """Alive rank actors (id -> worker pid), from the GCS actor table."""
    from ray._private import state

    out = {}
    for actor_id, info in state.actors().items():
        if info.get("ActorClassName", "").endswith("_RankActor") and info["State"] == "ALIVE":
            out[actor_id] = int(info["Pid"])
    return out


class Live:
    def __init__(
        self, url: str, model: MultimodalModel, serve_args: dict[str, Any], plan: PlacementPlan
    ) -> None:
        self.url = url
        self.model = model
        self.serve_args = serve_args
        self.initial_plan = plan
        self.http = httpx.Client(base_url=url, timeout=120)

    def deploy(self, user_config: dict[str, Any]) -> None:
        """What KubeRay does with serveConfigV2: the same app and version, new user_config."""
        from mmo_serving.app import build_app

        app = build_app(
            self.serve_args,
            engine_factory=BuiltinEngineFactory(tiny_engine),
            # a fixed code version (Ray 2.60 keeps it behind `_internal`): only
            # user_config changes, so Serve reconfigures the running replica
            options={"version": "v1", "_internal": True, "user_config": user_config},
        )
        serve.run(app, name=self.model.name, route_prefix="/")

    def skewed_traffic(self) -> None:
        async def go() -> None:
            # with a picture: the built-in model refuses (routes nothing for) a question
            # about shapes that comes without one
            picture = np.full((32, 32, 3), 255, dtype=np.uint8)
            picture[8:24, 8:24] = (220, 20, 20)
            content = [
                {"type": "text", "text": PROMPT},
                {"type": "image_url", "image_url": {"url": encode_data_url(picture)}},
            ]
            body = {
                "model": self.model.name,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 4,
                "temperature": 0,
            }
            async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
                rs = await asyncio.gather(
                    *[client.post("/v1/chat/completions", json=body) for _ in range(REQUESTS)]
                )
            for r in rs:
                assert r.status_code == 200, r.text

        asyncio.run(go())

    def load(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.http.get("/v1/expert-load").json()
        return doc


def _user_config(model: MultimodalModel, plan: PlacementPlan) -> dict[str, Any]:
    """The serveConfigV2 user_config the operator's RayService builder writes."""
    user_config: dict[str, Any] = deployment_config(model, build_app_args(model, plan))[
        "user_config"
    ]
    return user_config


@pytest.fixture(scope="module")
def live(ray_cluster: Any) -> Iterator[Live]:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tiny_engine for Ray
    validated = validate(SPEC)
    model = validated.model
    plan, args = plan_and_app_args(validated)
    # the toy expert-parallel engine stands in for the checkpoint on the PVC (which
    # would be served by vLLM): the rebalancing under test is the built-in engine's
    args.engine = "mmo"
    serve_config = build_serve_config(model, args)  # what the RayService carries
    [app] = serve_config["applications"]
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        running = Live(f"http://127.0.0.1:{port}", model, app["args"], plan)
        assert app["deployments"][0]["user_config"] == _user_config(model, plan)
        running.deploy(_user_config(model, plan))
        yield running
    finally:
        serve.shutdown()


def test_rebalance_live_engine_without_restart(live: Live) -> None:
    initial = live.initial_plan
    ready = live.http.get("/readyz").json()
    ranks = _rank_actors()
    assert len(ranks) == RANKS, ranks
    start = live.load()
    assert PlacementPlan.model_validate(start["placement"]) == initial

    live.skewed_traffic()
    doc = live.load()
    observed = parse_expert_load(doc, initial)  # as the operator's timer reads it
    assert observed.total > 0
    before = max(doc["balancedness"])
    settings = live.model.spec.experts.rebalance
    decision = should_rebalance(initial, observed.loads, settings.min_improvement)
    print(f"\nwindow balancedness under the initial plan: {doc['balancedness']}")
    print(f"operator decision: {decision.reason}")
    assert decision.plan is not None, decision.reason
    new = decision.plan

    live.deploy(_user_config(live.model, new))  # KubeRay's lightweight update

    after_ready = live.http.get("/readyz").json()
    assert after_ready["startedAt"] == ready["startedAt"], "same replica"
    assert after_ready["plansApplied"] == ready["plansApplied"] + 1
    assert _rank_actors() == ranks, "same rank actors in the same processes"
    held = {r["rank"]: r["heldExperts"] for r in after_ready["ranks"]}
    for rank in range(RANKS):
        want = [sorted(set(new.experts_on_gpu(layer, rank))) for layer in range(len(new.layers))]
        assert [sorted(h) for h in held[rank]] == want, f"rank {rank} holds the new experts"
    applied = live.load()
    assert applied["planVersion"] == doc["planVersion"] + 1
    assert PlacementPlan.model_validate(applied["placement"]) == new
    assert sum(sum(sum(r) for r in e) for e in applied["window"]) == 0, "a fresh window"

    live.skewed_traffic()  # the same skew, now on the new plan
    again = live.load()
    after = max(again["balancedness"])
    print(f"window balancedness under the new plan:     {again['balancedness']}")
    print(
        f"worst layer: {before:.3f} -> {after:.3f} (planner predicted "
        f"{decision.balancedness_before:.3f} -> {decision.balancedness_after:.3f}, "
        f"{decision.moved} experts moved)"
    )
    assert after < before
    assert _rank_actors() == ranks
