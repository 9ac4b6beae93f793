"""Response cache: LRU with a time-to-live, one per replica.

The key is a SHA-256 of the canonical request (route, prompt, image digests, limits)
together with the model version, the data class and the tenant, so that an answer is
never served across model versions, data classes or tenants. Values are the engine's
results (not whole HTTP responses): ids and timestamps stay fresh on a hit.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheScope:
    """What, besides the request itself, must match for a cached answer to be reused."""

    model_version: str
    data_class: str
    tenant: str


def cache_key(route: str, canonical: Any, scope: CacheScope) -> str:
    """Stable key: canonical JSON (sorted keys, no whitespace) hashed with SHA-256."""
    doc = {
        "route": route,
        "request": canonical,
        "model_version": scope.model_version,
        "data_class": scope.data_class,
        "tenant": scope.tenant,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache(Generic[V]):
    """Thread-safe LRU + TTL map. ``max_entries`` bounds memory; expired entries are
    dropped when read and when the LRU end is trimmed."""

    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be > 0")
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        now = self._clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            expires, value = entry
            if expires <= now:
                del self._data[key]
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._data[key] = (self._clock() + self.ttl_seconds, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
