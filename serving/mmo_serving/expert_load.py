"""The expert-load recorder: polls the engine's expert load into the ``mmo_*`` gauges;
and the ``GET /v1/expert-load`` answer.

Every ``EXPERT_METRICS_INTERVAL_S`` it reads the engine's per-layer, per-expert,
per-rank token counts, exports the increase since the last read and each layer's
balancedness; every ``GAUGE_REFRESH_S`` it sets the gauges again (with the front's queue
depths), well within Ray's metrics report interval
(:data:`mmo_serving.metrics.METRICS_REPORT_INTERVAL_MS`), so that every scrape sees them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mmo_serving.backend import ChatEngine
from mmo_serving.config import AppArgs
from mmo_serving.engine.types import ExpertLoad
from mmo_serving.metrics import ServingMetrics
from mmo_serving.openai.schema import ApiError

log = logging.getLogger("mmo_serving.expert_load")

EXPERT_METRICS_INTERVAL_S = 5.0
GAUGE_REFRESH_S = 0.5
# why an engine reports no expert load, for the 404 of GET /v1/expert-load
ENGINE_BALANCES_ITSELF = {
    "vllm": "vLLM re-places the experts itself (EPLB, on with spec.experts.placement "
    "balanced) and reports no per-expert load here; the operator's live rebalancing "
    "skips this model",
}


def expert_load_document(args: AppArgs, load: ExpertLoad) -> dict[str, Any]:
    """The ``GET /v1/expert-load`` body: the load, the model and the plan it runs."""
    doc = load.to_json_dict()
    doc["model"] = args.name
    placement = args.placement
    doc["placement"] = placement.model_dump(mode="json", by_alias=True) if placement else None
    return doc


def no_expert_load(engine: str) -> ApiError:
    why = ENGINE_BALANCES_ITSELF.get(engine)
    message = f"engine {engine} does not report expert load" + (f": {why}" if why else "")
    return ApiError(404, message, code="expert_load_unavailable")


def _at(tokens: list[list[list[int]]], layer: int, expert: int, rank: int) -> int:
    try:
        return tokens[layer][expert][rank]
    except IndexError:
        return 0


class ExpertLoadRecorder:
    def __init__(
        self,
        engine: ChatEngine,
        metrics: ServingMetrics,
        queue_depths: Callable[[], dict[str, int]],
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.queue_depths = queue_depths
        self._last_tokens: list[list[list[int]]] | None = None
        self._lock = asyncio.Lock()
        self._balancedness: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        self._poller = loop.create_task(self._poll())
        self._gauges = loop.create_task(self._refresh_gauges())

    async def record(self) -> ExpertLoad | None:
        """Read the engine's expert load; export the token deltas and balancedness.
        None when the engine does not report expert load."""
        async with self._lock:
            load = await self.engine.expert_load()
            if load is None:
                return None
            last = self._last_tokens
            for layer in range(load.num_layers):
                for expert in range(load.num_experts):
                    for rank in range(load.num_ranks):
                        now = load.tokens[layer][expert][rank]
                        before = 0 if last is None else _at(last, layer, expert, rank)
                        if now > before:
                            self.metrics.expert_tokens(layer, expert, rank, now - before)
                self._balancedness[layer] = load.balancedness(layer)
                self.metrics.balancedness(layer, self._balancedness[layer])
            # a copy: an engine may hand out the counts it keeps updating
            self._last_tokens = [[list(ranks) for ranks in layer] for layer in load.tokens]
            return load

    def check_health(self) -> None:
        if self._poller.done() and not self._poller.cancelled():
            exc = self._poller.exception()
            if exc is not None:
                raise RuntimeError(f"expert-load poller died: {exc!r}")

    def stop(self) -> None:
        self._poller.cancel()
        self._gauges.cancel()

    async def _refresh_gauges(self) -> None:
        while True:
            await asyncio.sleep(GAUGE_REFRESH_S)
            for route, depth in self.queue_depths().items():
                self.metrics.queue_depth(route, depth)
            for layer, value in self._balancedness.items():
                self.metrics.balancedness(layer, value)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(EXPERT_METRICS_INTERVAL_S)
            try:
                await self.record()
            except Exception:
                log.exception("reading the expert load failed")
