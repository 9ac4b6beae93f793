"""The operator's gauges: a failed write counts as unreconciled, never as unready."""

from __future__ import annotations

from mmo_operator import metrics


def _value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels or None)


def test_a_failed_write_is_unreconciled_and_leaves_ready_alone() -> None:
    metrics.set_ready("ns/a", True)
    metrics.set_reconciled("ns/a", True)
    before = _value("mmo_operator_objects", ready="true")
    metrics.set_reconciled("ns/a", False)
    assert _value("mmo_operator_objects_unreconciled") == 1.0
    assert _value("mmo_operator_objects", ready="true") == before
    metrics.set_reconciled("ns/a", True)
    assert _value("mmo_operator_objects_unreconciled") == 0.0
    metrics.set_reconciled("ns/a", False)
    metrics.forget("ns/a")
    assert _value("mmo_operator_objects_unreconciled") == 0.0
