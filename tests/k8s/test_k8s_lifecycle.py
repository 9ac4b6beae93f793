"""The operator (a `mmo operator` subprocess) against the strict emulator: lifecycle."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kube_emulator import EmulatorThread
from kubernetes.config import new_client_from_config
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

from mmo_operator.kube import Kube

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


def test_creating_a_model_lists_nothing_and_writes_status_twice(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """A new model has no children to list, and kopf's own metadata writes (finalizer,
    annotations) must not make the status write conflict: the status is written once
    when planned and once when Ready, and the model is never read back."""
    start_operator("--resync-seconds", "120")  # no resync inside the window
    mark = cluster.request_mark()
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.play_kuberay("tiny")
    wait_for("Ready", lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True")
    time.sleep(1.0)  # let late writes land
    calls = [r for r in cluster.requests_since(mark) if "watch=true" not in r]
    assert [r for r in calls if r.startswith("GET") and "labelSelector=" in r] == []
    assert [r for r in calls if r.startswith("GET") and "/multimodalmodels/" in r] == []
    status_writes = [r for r in calls if r.startswith("PATCH") and "/tiny/status?" in r]
    assert len(status_writes) == 2, calls


def test_status_write_is_skipped_once_the_spec_moved_on(
    cluster: Cluster, emu: EmulatorThread, tmp_path: Path
) -> None:
    kube = Kube(new_client_from_config(emu.write_kubeconfig(str(tmp_path / "kubeconfig"))))
    generation = cluster.create(MMM, model_doc())["metadata"]["generation"]
    # a metadata write (as kopf's finalizer) changes resourceVersion, not generation
    cluster.patch(MMM, "tiny", {"metadata": {"finalizers": ["serving.mmo.dev/finalizer"]}})
    assert kube.patch_status("ns1", "tiny", {"endpoint": "first"}, generation) is True
    cluster.patch(MMM, "tiny", {"spec": {"batching": {"maxBatchSize": 4}}})
    assert kube.patch_status("ns1", "tiny", {"endpoint": "stale"}, generation) is False
    assert cluster.get(MMM, "tiny")["status"] == {"endpoint": "first"}


def test_delete_removes_children_and_releases_finalizer(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    start_operator()
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.delete(MMM, "tiny")
    wait_for("the model to be gone", lambda: cluster.get(MMM, "tiny") is None)
    wait_for("the children to be gone", lambda: cluster.children() == {}, timeout=10)


def test_sigterm_stops_the_operators_own_loop_before_kopf_gives_up_on_it(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """kopf waits 5 s for tasks it did not start and then cancels them: the operator
    stops its catch-up loop itself when kopf cleans up (pods stop sooner on a rollout)."""
    op = start_operator()
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    op.stop()
    assert op.proc.returncode == 0
    log = op.log()
    assert "catch-up loop stopped" in log.split("Signal SIGTERM is received")[1]
