"""Which models the catch-up loop reconciles again, and when (pure parts)."""

from __future__ import annotations

from typing import Any

from mmo_operator.catch_up import CatchUp, behind
from mmo_operator.model_state import ModelState, ModelStates


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
    queued = _state(2, 1)
    queued.kopf_handling = 1
    assert not behind(queued), "kopf's handler waits for a worker thread"


def test_grace_then_backoff() -> None:
    clock = CatchUp(grace=3.0)
    dropped = _state(1, None)
    assert not clock.due("a", dropped, 100.0)
    assert clock.due("a", dropped, 103.0)
    clock.failed("a", 103.0)
    assert not clock.due("a", dropped, 103.4) and clock.due("a", dropped, 103.5)
    clock.failed("a", 103.5)
    assert not clock.due("a", dropped, 104.4) and clock.due("a", dropped, 104.5)
    clock.failed("a", 104.5)
    clock.failed("a", 106.5)
    clock.failed("a", 110.5)
    assert not clock.due("a", dropped, 114.4) and clock.due("a", dropped, 114.5), "4 s at most"
    # kopf works on it (however slowly): it is left to kopf, and to kopf's own retry
    slow = _state(2, 1)
    slow.kopf_handling = 1
    assert not clock.due("b", slow, 200.0) and not clock.due("b", slow, 210.0)
    slow.kopf_handling, slow.kopf_active_at = 0, 210.0
    assert not clock.due("b", slow, 210.0) and not clock.due("b", slow, 212.9)
    assert clock.due("b", slow, 213.0)
    slow.kopf_retry_at = 218.0  # kopf retries a failed handler then
    assert not clock.due("b", slow, 220.9) and clock.due("b", slow, 221.0)
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
