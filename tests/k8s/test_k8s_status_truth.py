"""Under faults the status never lies and no update is lost: a conflict on kopf's own
finalizer patch, status writes failing while KubeRay reports, one failed write on a
serving model, a change that needs a new Ray cluster, a spec that does not parse."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from operator_harness import (
    MMM,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    model_doc,
    wait_for,
)

StartOperator = Callable[..., OperatorProcess]
NO_RESYNC = ("--resync-seconds", "120")  # what is checked here must not wait for a resync


def _cond(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return {}


def _status(cluster: Cluster, ctype: str) -> str | None:
    return (cluster.condition("tiny", ctype) or {}).get("status")


def _serving(cluster: Cluster, start_operator: StartOperator, *extra: str) -> None:
    start_operator(*extra)
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.play_kuberay("tiny")
    wait_for("Ready", lambda: _status(cluster, "Ready") == "True")


def test_a_conflict_on_the_finalizer_patch_is_not_dropped(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """kopf drops the event whose finalizer patch answers 409; the model is caught up
    with anyway, long before a resync."""
    fault = cluster.call(cluster.emu.inject, 409, count=1, method="PATCH", resource=MMM)
    start_operator(*NO_RESYNC)
    cluster.create(MMM, model_doc())
    wait_for("a status despite the 409", lambda: _status(cluster, "Planned") == "True", timeout=15)
    assert fault.hits == 1
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"), timeout=5)
    wait_for(
        "kopf's finalizer on the next event",
        lambda: (
            "serving.mmo.dev/finalizer"
            in cluster.get(MMM, "tiny")["metadata"].get("finalizers", [])
        ),
        timeout=10,
    )


def test_a_report_that_arrives_while_status_writes_fail_is_not_lost(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    _serving(cluster, start_operator, *NO_RESYNC)
    fault = cluster.call(
        cluster.emu.inject, 500, count=10_000, method="PATCH", resource=MMM, subresource="status"
    )
    cluster.play_kuberay("tiny", ready=False)  # the RayService stops serving
    wait_for("the status write to fail", lambda: fault.hits > 0)
    time.sleep(2.0)  # a burst of failures
    cluster.call(cluster.emu.faults.remove, fault)
    wait_for(
        "Ready=False within 10 s of the burst's end",
        lambda: _status(cluster, "Ready") == "False",
        timeout=10,
    )
    assert cluster.condition("tiny", "Ready")["reason"] == "RayServiceNotReady"


def test_one_failed_write_leaves_a_serving_model_ready(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """A 500 on an apply goes to Reconciled (with the API error), never to Ready."""
    _serving(cluster, start_operator)
    before = len(cluster.versions(MMM, "tiny"))
    fault = cluster.call(cluster.emu.inject, 500, count=1, method="PATCH", resource=RAYSERVICES)
    cluster.patch(MMM, "tiny", {"spec": {"batching": {"maxBatchSize": 24}}})
    wait_for(
        "the change applied after the fault",
        lambda: (
            "maxBatchSize: 24"
            in (cluster.get(RAYSERVICES, "tiny") or {}).get("spec", {}).get("serveConfigV2", "")
        ),
    )
    cluster.play_kuberay("tiny")
    wait_for("Reconciled again", lambda: _status(cluster, "Reconciled") == "True")
    assert fault.hits == 1
    since = cluster.versions(MMM, "tiny")[before:]
    failed = [
        _cond(v, "Reconciled") for v in since if _cond(v, "Reconciled").get("status") == "False"
    ]
    assert failed and "injected fault 500" in failed[0]["message"], "the error is shown"
    assert failed[0]["reason"] == "ApplyFailed"
    assert all(_cond(v, "Ready").get("status") == "True" for v in since if v.get("status"))


def test_a_change_that_needs_a_new_cluster_is_progressing_at_once(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    _serving(cluster, start_operator)
    assert _status(cluster, "Progressing") == "False"
    cluster.patch(MMM, "tiny", {"spec": {"resources": {"gpuType": "H100-80GB"}}})
    progressing = wait_for(
        "Progressing=True before KubeRay says anything",
        lambda: (c := cluster.condition("tiny", "Progressing")) and c["status"] == "True" and c,
    )
    assert progressing["reason"] == "ClusterUpgrade"
    assert cluster.get(RAYSERVICES, "tiny")["status"]["observedGeneration"] == 1
    # KubeRay acts on it: a pending cluster starts while the old one serves
    cluster.play_kuberay("tiny", pending_cluster="tiny-raycluster-fghij")
    time.sleep(1.0)
    assert cluster.condition("tiny", "Progressing")["reason"] == "ClusterUpgrade"
    assert _status(cluster, "Ready") == "True", "the old cluster still serves"
    cluster.play_kuberay("tiny", cluster="tiny-raycluster-fghij")  # the new one serves
    wait_for("Progressing=False", lambda: _status(cluster, "Progressing") == "False")


def test_a_wrong_typed_field_gets_one_status_and_one_event(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """Without the webhook a spec that does not parse (the emulator stores what the CRD
    schema would refuse, as an API server does for fields without a rule) is reported in
    status once, with the field's path, and by one Warning event."""
    start_operator()
    mark = cluster.request_mark()
    doc = model_doc()
    doc["spec"]["resources"]["gpuType"] = "A100"
    doc["spec"]["batching"]["maxBatchSise"] = 8
    cluster.create(MMM, doc)
    planned = wait_for(
        "Planned=False", lambda: (c := cluster.condition("tiny", "Planned")) and c, timeout=15
    )
    assert planned["status"] == "False" and planned["reason"] == "InvalidSpec"
    assert "spec.resources.gpuType" in planned["message"]
    assert "spec.batching.maxBatchSise" in planned["message"]
    assert _status(cluster, "Ready") == "False"
    time.sleep(7.0)  # two resync periods (3 s): nothing more is written or posted
    status_writes = [w for w in cluster.writes_since(mark) if w.endswith("/tiny/status")]
    assert len(status_writes) == 1, status_writes
    warnings = [
        e
        for e in cluster.events()
        if e.get("type") == "Warning" and e["involvedObject"]["name"] == "tiny"
    ]
    assert [e["reason"] for e in warnings] == ["InvalidSpec"], warnings
    assert "spec.resources.gpuType" in warnings[0]["message"]
