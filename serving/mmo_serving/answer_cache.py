"""The response cache as the front uses it: scoped keys, hits and misses counted, and
streamed answers stored once complete.

A key is ``None`` when the cache is off (every method then computes and reports
``off``) or when the request's parts are ``None``: an answer that must not be reused
(a sampled one), computed and reported as ``bypass``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mmo_serving.backend import ChatDelta, ChatOutput
from mmo_serving.cache import CacheScope, ResponseCache, cache_key
from mmo_serving.config import AppArgs
from mmo_serving.metrics import ServingMetrics
from mmo_serving.openai.sse import stored_when_complete, words


class AnswerCache:
    def __init__(self, args: AppArgs, metrics: ServingMetrics) -> None:
        self.model_version = args.model_version
        self.metrics = metrics
        self.cache: ResponseCache[Any] | None = None
        if args.cache.enabled:
            self.cache = ResponseCache(args.cache.max_entries, args.cache.ttl_seconds)

    def key(self, route: str, parts: Any | None, data_class: str, tenant: str) -> str | None:
        if self.cache is None or parts is None:
            return None
        return cache_key(route, parts, CacheScope(self.model_version, data_class, tenant))

    def _lookup(self, key: str | None) -> tuple[Any, str]:
        if self.cache is None:
            return None, "off"
        if key is None:
            return None, "bypass"
        hit = self.cache.get(key)
        if hit is not None:
            self.metrics.cache_hit()
            return hit, "hit"
        self.metrics.cache_miss()
        return None, "miss"

    async def answer(
        self, key: str | None, compute: Callable[[], Awaitable[Any]]
    ) -> tuple[Any, str]:
        """The cached value or the computed one (then stored), and off | hit | miss."""
        hit, status = self._lookup(key)
        if status == "hit":
            return hit, status
        value = await compute()
        if key is not None and self.cache is not None:
            self.cache.put(key, value)
        return value, status

    def stream(
        self, key: str | None, deltas: Callable[[], AsyncIterator[ChatDelta]]
    ) -> tuple[AsyncIterator[ChatDelta], str]:
        """A cached answer word by word, or the engine's stream, stored once complete."""
        hit, status = self._lookup(key)
        if status == "hit":
            return words(hit), status
        cache = self.cache
        if key is None or cache is None:
            return deltas(), status

        def store(output: ChatOutput) -> None:
            cache.put(key, output)

        return stored_when_complete(deltas(), store), status
