"""Which models the catch-up loop reconciles again, and when (pure parts)."""

from __future__ import annotations

from typing import Any

from mmo_operator.catch_up import CatchUp, behind
from mmo_operator.model_state import ModelState, ModelStates

FINALIZER = "serving.mmo.dev/finalizer"


def _state(generation: int, observed: int | None, **meta: Any) -> ModelState:
    body: dict[str, Any] = {"metadata": {"name": "m", "generation": generation, **meta}}
    if observed is not None:
        body["status"] = {"observedGeneration": observed}
    return ModelState(body=body)


def test_behind_when_the_status_does_not_describe_the_generation() -> None:
    assert behind(_state(1, None)), "never reconciled (kopf dropped its event)"
    assert behind(_state(2, 1))
    assert not behind(_state(2, 2))
    stale = _state(2, 2)
    stale.status_stale = True
    assert behind(stale), "a RayService report not written yet"
    assert not behind(_state(2, 1, deletionTimestamp="t")), "cleanup owns it"
    invalid = _state(3, None)
    invalid.failed_generation = 3
    assert not behind(invalid), "an invalid spec is not retried until it changes"
    running = _state(2, 1)
    running.lock.acquire()
    assert not behind(running), "a reconcile runs now"


def test_grace_then_backoff() -> None:
    clock = CatchUp(grace=3.0, finalizer=FINALIZER)
    dropped = _state(1, None)
    assert not clock.due("a", dropped, 100.0)
    assert clock.due("a", dropped, 103.0)
    clock.failed("a", 103.0)
    assert not clock.due("a", dropped, 103.5) and clock.due("a", dropped, 104.0)
    clock.failed("a", 104.0)
    clock.failed("a", 106.0)
    clock.failed("a", 110.0)
    clock.failed("a", 118.0)
    assert not clock.due("a", dropped, 125.9) and clock.due("a", dropped, 126.0), "8 s at most"
    # kopf has seen it (its finalizer is on): kopf's own retries come first
    seen = _state(2, 1, finalizers=[FINALIZER])
    assert not clock.due("b", seen, 200.0) and not clock.due("b", seen, 205.0)
    assert clock.due("b", seen, 209.0)
    # caught up: forgotten
    dropped.body["status"] = {"observedGeneration": 1}  # type: ignore[index]
    assert not clock.due("a", dropped, 300.0) and "a" not in clock.since


def test_model_states_hold_reports_only_while_a_reconcile_runs() -> None:
    states = ModelStates()
    report = ({"metadata": {"name": "m"}}, None)
    assert not states.hold("ns/m", report), "nothing runs: the caller refreshes itself"
    state = states("ns/m")
    state.lock.acquire()
    assert states.hold("ns/m", report)
    assert states.take_or_release(state) == report and state.lock.locked()
    assert states.take_or_release(state) is None and not state.lock.locked()
    states.forget("ns/m")
    assert states.peek("ns/m") is None
