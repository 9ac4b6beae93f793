"""The catch-up loop: nothing the operator could not act on is dropped.

kopf drops a watch event when one of its own patches fails (a 409 on the finalizer
patch), and a status write that fails while a RayService report arrives has no event
left to retry it. Both leave a model *behind*: its status does not describe its
generation (``status.observedGeneration``), or a RayService report is not in its status
yet (``ModelState.status_stale``). This loop finds such models among those the operator
has seen and reconciles each from a fresh read (its events are posted here, outside kopf's
handlers), with backoff (0.5, 1, 2, 4 s) until it
succeeds. A model is left alone while a kopf handler runs for it and for ``grace``
seconds after kopf last worked on it (an event, a handler, or the retry kopf scheduled
for a failed one), so that kopf's own handling, however slow under load, is not doubled:
only what kopf has let go is caught up with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mmo_operator.events import Event
from mmo_operator.kube import ApiFailure, Kube
from mmo_operator.model_state import ModelState
from mmo_operator.objects import Obj
from mmo_operator.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)
BACKOFFS = (0.5, 1.0, 2.0, 4.0)

Done = Callable[[Any, "Outcome | None", "Exception | None"], None]


def behind(state: ModelState) -> bool:
    """The model's status does not (yet) say what the operator knows of it."""
    body = state.body
    if body is None or state.lock.locked() or state.kopf_handling:
        return False
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    generation = meta.get("generation")
    if state.failed_generation is not None and state.failed_generation == (generation or 0):
        return bool(state.status_stale)
    observed = (body.get("status") or {}).get("observedGeneration")
    return state.status_stale or observed != generation


def reconcile_fresh(rec: Reconciler, key: str) -> tuple[Obj, Outcome] | None:
    """Reconcile a model that is behind from a fresh read of it (gone: forgotten)."""
    state = rec.states.peek(key)
    if state is None or state.body is None:
        return None
    meta = state.body["metadata"]
    api_version, kind = state.body["apiVersion"], state.body["kind"]
    body = rec.kube.get(api_version, kind, meta.get("namespace") or "default", meta["name"])
    if body is None:
        rec.states.forget(key)
        return None
    return body, rec.reconcile(body)


class CatchUp:
    """Which models are behind since when, and when each is tried next."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.since: dict[str, float] = {}
        self.tries: dict[str, int] = {}
        self.next_at: dict[str, float] = {}

    def due(self, key: str, state: ModelState, now: float) -> bool:
        if not behind(state):
            self.done(key)
            return False
        since = max(self.since.setdefault(key, now), state.kopf_active_at, state.kopf_retry_at)
        return now >= max(self.next_at.get(key, 0.0), since + self.grace)

    def failed(self, key: str, now: float) -> None:
        tries = self.tries.get(key, 0)
        self.tries[key] = tries + 1
        self.next_at[key] = now + BACKOFFS[min(tries, len(BACKOFFS) - 1)]

    def done(self, key: str) -> None:
        self.since.pop(key, None)
        self.tries.pop(key, None)
        self.next_at.pop(key, None)


async def catch_up(
    rec: Reconciler, *, on_done: Done, every: float = 0.5, grace: float = 3.0
) -> None:
    """Run until cancelled; ``on_done(body, outcome, error)`` records the metrics."""
    clock = CatchUp(grace)

    async def one(key: str, body: Any) -> None:
        outcome: Outcome | None = None
        error: Exception | None = None
        try:
            result = await asyncio.to_thread(reconcile_fresh, rec, key)
        except Exception as e:  # retried with backoff; the loop itself never stops
            log.warning("catching up with %s failed (retried): %s", key, e)
            clock.failed(key, time.monotonic())
            error = e
        else:
            clock.done(key)
            if result is None:
                return
            log.info("caught up with %s", key)
            body, outcome = result
        done = outcome.events if outcome is not None else getattr(error, "events", [])
        on_done(body, outcome, error)
        await asyncio.to_thread(post_events, rec.kube, body, done)

    while True:
        await asyncio.sleep(every)
        try:
            due = []
            for key in rec.states.names():
                state = rec.states.peek(key)
                if state is not None and clock.due(key, state, time.monotonic()):
                    due.append(one(key, state.body))
            await asyncio.gather(*due)  # in the worker threads, side by side
        except Exception:  # a bug here must not stop the operator
            log.exception("the catch-up loop failed; it goes on")


def post_events(kube: Kube, body: Obj, events: list[Event]) -> None:
    for ev in events[:10]:
        try:
            kube.post_event(body, ev.type, ev.reason, ev.message)
        except ApiFailure as e:
            log.warning("could not post an event about %s: %s", body["metadata"]["name"], e)
