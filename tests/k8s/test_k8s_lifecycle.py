"""The operator (a `mmo operator` subprocess) against the strict emulator: lifecycle."""

from __future__ import annotations

import time
from collections.abc import Callable

from operator_harness import (
    CONFIGMAPS,
    MMM,
    PDBS,
    PODMONITORS,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    model_doc,
    wait_for,
)

StartOperator = Callable[..., OperatorProcess]


def test_create_builds_children_and_status(cluster: Cluster, start_operator: StartOperator) -> None:
    start_operator()
    model = cluster.create(MMM, model_doc())
    rs = wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    assert rs["metadata"]["ownerReferences"][0]["uid"] == model["metadata"]["uid"]
    children = cluster.children()
    assert children[CONFIGMAPS] == ["tiny-placement"]
    assert children[PDBS] == ["tiny-workers"]
    assert children[PODMONITORS] == ["tiny"]
    ready = wait_for("a Ready condition", lambda: cluster.condition("tiny", "Ready"))
    assert ready["status"] == "False"
    planned = cluster.condition("tiny", "Planned")
    assert planned is not None and planned["status"] == "True"
    assert "8×A100-80GB" in planned["message"]
    status = cluster.get(MMM, "tiny")["status"]
    assert status["observedGeneration"] == 1
    assert status["rayService"] == "tiny"
    assert status["endpoint"] == "http://tiny-serve-svc.ns1.svc:8000"
    assert status["capacity"]["gpus"] == 8
    assert status["placement"]["configMap"] == "tiny-placement"

    cluster.play_kuberay("tiny")
    wait_for(
        "Ready=True after KubeRay reports",
        lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True",
    )
    assert "serving at http://tiny-serve-svc" in cluster.condition("tiny", "Ready")["message"]
    finalizers = cluster.get(MMM, "tiny")["metadata"]["finalizers"]
    assert "serving.mmo.dev/finalizer" in finalizers


def test_unchanged_object_costs_no_writes(cluster: Cluster, start_operator: StartOperator) -> None:
    start_operator()
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.play_kuberay("tiny")
    wait_for("Ready", lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True")
    time.sleep(1.0)  # let kopf finish its own bookkeeping
    mark = cluster.request_mark()
    time.sleep(7.5)  # more than two resync periods (3 s)
    assert cluster.writes_since(mark) == []
    reads = [r for r in cluster.requests_since(mark) if r.startswith("GET")]
    assert reads, "the resync timer did observe the children"


def test_delete_removes_children_and_releases_finalizer(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    start_operator()
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.delete(MMM, "tiny")
    wait_for("the model to be gone", lambda: cluster.get(MMM, "tiny") is None)
    wait_for("the children to be gone", lambda: cluster.children() == {}, timeout=10)
