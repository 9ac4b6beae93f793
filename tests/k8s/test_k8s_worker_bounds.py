"""Worker-group replica bounds reach the running RayCluster, which KubeRay leaves alone.

KubeRay keeps minReplicas/maxReplicas out of its cluster hash: a change of them in the
RayService is never applied to a running RayCluster. The operator JSON-patches exactly
those two fields on the active and pending clusters named in the RayService's status, and
never the autoscaler's ``replicas``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from operator_harness import (
    MMM,
    RAYCLUSTERS,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    model_doc,
    raycluster_crd,
    wait_for,
)

StartOperator = Callable[..., OperatorProcess]


def _group(rc: dict[str, Any]) -> dict[str, Any]:
    (group,) = rc["spec"]["workerGroupSpecs"]
    return dict(group)


def _ready(cluster: Cluster) -> bool:
    return (cluster.condition("tiny", "Ready") or {}).get("status") == "True"


def test_bounds_change_is_patched_on_the_running_clusters(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    cluster.install(raycluster_crd())
    start_operator()
    cluster.create(MMM, model_doc(autoscaling={"minReplicas": 1, "maxReplicas": 2}))
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    # the active cluster's autoscaler has scaled the group to 2 workers
    active = cluster.create_raycluster("tiny", "abcde", replicas=2)["metadata"]["name"]
    pending = cluster.create_raycluster("tiny", "fghij")["metadata"]["name"]
    cluster.play_kuberay("tiny", cluster=active, pending_cluster=pending)
    wait_for("Ready", lambda: _ready(cluster))

    # A resync reads both clusters once, finds the bounds right and writes nothing to them.
    mark = cluster.request_mark()
    wait_for(
        "the clusters read",
        lambda: sum("/rayclusters/" in r for r in cluster.requests_since(mark)) >= 2,
        timeout=15,
    )
    time.sleep(1.0)
    assert not [w for w in cluster.writes_since(mark) if "/rayclusters/" in w]
    before = {n: cluster.get(RAYCLUSTERS, n) for n in (active, pending)}

    cluster.patch(MMM, "tiny", {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}})
    for name in (active, pending):
        wait_for(
            f"maxReplicas 4 on {name}",
            lambda n=name: _group(cluster.get(RAYCLUSTERS, n)).get("maxReplicas") == 4,
        )
    rs = cluster.get(RAYSERVICES, "tiny")
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 4
    for name, old in before.items():
        new = cluster.get(RAYCLUSTERS, name)
        group, old_group = _group(new), _group(old)
        assert group["minReplicas"] == 1
        assert group["replicas"] == old_group["replicas"], "the autoscaler's replicas stay"
        expected = copy.deepcopy(old["spec"])
        expected["workerGroupSpecs"][0]["maxReplicas"] = 4
        assert new["spec"] == expected, "only maxReplicas changed (the template is kept)"
    assert _group(cluster.get(RAYCLUSTERS, active))["replicas"] == 2
    # the Event follows the patch: on a busy machine it may land a moment later
    wait_for(
        "the WorkerBoundsUpdated event",
        lambda: "WorkerBoundsUpdated" in [e.get("reason") for e in cluster.events()],
    )

    # Bounds in place again: later resyncs neither read nor write the clusters.
    time.sleep(1.0)
    mark = cluster.request_mark()
    time.sleep(7.5)  # more than two resync periods (3 s)
    assert [r for r in cluster.requests_since(mark) if "/rayclusters" in r] == []
    assert cluster.writes_since(mark) == []


def test_without_rayclusters_served_the_reconcile_goes_on(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """KubeRay's RayService CRD without the RayCluster one (or no RBAC for it): the
    bounds still reach the RayService and the model stays Ready."""
    proc = start_operator()
    cluster.create(MMM, model_doc(autoscaling={"minReplicas": 1, "maxReplicas": 2}))
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.play_kuberay("tiny", cluster="tiny-raycluster-abcde")
    wait_for("Ready", lambda: _ready(cluster))
    mark = cluster.request_mark()
    cluster.patch(MMM, "tiny", {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}})
    wait_for(
        "maxReplicas 3 in the RayService",
        lambda: (
            (rs := cluster.get(RAYSERVICES, "tiny"))
            and rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 3
        ),
    )
    wait_for(
        "observedGeneration 2",
        lambda: (cluster.get(MMM, "tiny").get("status") or {}).get("observedGeneration") == 2,
    )
    assert _ready(cluster)
    time.sleep(3.5)  # a resync
    assert [r for r in cluster.requests_since(mark) if "/rayclusters" in r] == []
    assert "Traceback" not in proc.log()
