"""Spec changes: Serve-only changes stay in place, cluster changes roll, children pruned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from operator_harness import (
    MMM,
    PODMONITORS,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    model_doc,
    wait_for,
)

StartOperator = Callable[..., OperatorProcess]


def _serve(rs: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return config


def _deployment(rs: dict[str, Any]) -> dict[str, Any]:
    deployment: dict[str, Any] = _serve(rs)["applications"][0]["deployments"][0]
    return deployment


def _reasons(cluster: Cluster) -> list[str]:
    return [e.get("reason", "") for e in cluster.events()]


def _ready_model(cluster: Cluster, start_operator: StartOperator, **spec: Any) -> dict[str, Any]:
    start_operator()
    cluster.create(MMM, model_doc(**spec))
    rs = wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    cluster.play_kuberay("tiny")
    wait_for("Ready", lambda: (cluster.condition("tiny", "Ready") or {}).get("status") == "True")
    result: dict[str, Any] = rs
    return result


def test_serve_only_change_updates_serve_config_in_place(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    before = _ready_model(cluster, start_operator)
    cluster.patch(
        MMM,
        "tiny",
        {
            "spec": {
                "batching": {"maxBatchSize": 32},
                "autoscaling": {"targetOngoingRequests": 12, "maxReplicas": 3},
            }
        },
    )
    after = wait_for(
        "the new batch size in user_config",
        lambda: (
            (rs := cluster.get(RAYSERVICES, "tiny"))
            and _deployment(rs)["user_config"]["batching"]["maxBatchSize"] == 32
            and rs
        ),
    )
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "same RayService"
    hash_key = "serving.mmo.dev/cluster-hash"
    assert after["metadata"]["annotations"][hash_key] == before["metadata"]["annotations"][hash_key]
    cluster_before = before["spec"]["rayClusterConfig"]
    cluster_after = after["spec"]["rayClusterConfig"]
    assert cluster_after["headGroupSpec"] == cluster_before["headGroupSpec"]
    assert (
        cluster_after["workerGroupSpecs"][0]["template"]
        == (cluster_before["workerGroupSpecs"][0]["template"])
    )
    assert cluster_after["workerGroupSpecs"][0]["maxReplicas"] == 3, "replica bounds in place"
    assert _deployment(after)["autoscaling_config"]["target_ongoing_requests"] == 12
    assert _serve(after)["applications"][0]["args"] == _serve(before)["applications"][0]["args"]
    wait_for("the in-place event", lambda: "ServeConfigUpdated" in _reasons(cluster))
    wait_for(
        "observedGeneration 2",
        lambda: cluster.get(MMM, "tiny")["status"]["observedGeneration"] == 2,
    )


def test_cluster_change_rolls_with_a_new_cluster(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    before = _ready_model(cluster, start_operator)
    assert before["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    cluster.patch(MMM, "tiny", {"spec": {"resources": {"gpuType": "H100-80GB"}}})
    after = wait_for(
        "the H100 node affinity",
        lambda: (
            (rs := cluster.get(RAYSERVICES, "tiny"))
            and rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
                "affinity"
            ]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchExpressions"][0]["values"]
            == ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"]
            and rs
        ),
    )
    hash_key = "serving.mmo.dev/cluster-hash"
    assert after["metadata"]["annotations"][hash_key] != before["metadata"]["annotations"][hash_key]
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "KubeRay rolls it (blue/green)"
    wait_for("the upgrade event", lambda: "ClusterUpgrade" in _reasons(cluster))


def test_recreate_strategy_deletes_and_recreates_the_rayservice(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    start_operator()
    doc = model_doc()
    doc["metadata"]["annotations"] = {"serving.mmo.dev/upgrade-strategy": "Recreate"}
    cluster.create(MMM, doc)
    before = wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    assert before["spec"]["upgradeStrategy"] == {"type": "None"}
    cluster.patch(MMM, "tiny", {"spec": {"serving": {"image": "registry.local/mmo:2"}}})
    after = wait_for(
        "a new RayService",
        lambda: (
            (rs := cluster.get(RAYSERVICES, "tiny"))
            and rs["metadata"]["uid"] != before["metadata"]["uid"]
            and rs
        ),
        timeout=40,
    )
    image = after["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert image[0]["image"] == "registry.local/mmo:2"
    assert "RecreatingCluster" in _reasons(cluster)


def test_disabling_the_pod_monitor_prunes_it(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    _ready_model(cluster, start_operator)
    assert cluster.get(PODMONITORS, "tiny") is not None
    cluster.patch(MMM, "tiny", {"spec": {"monitoring": {"podMonitor": False}}})
    wait_for("the PodMonitor to be deleted", lambda: cluster.get(PODMONITORS, "tiny") is None)
    assert cluster.get(RAYSERVICES, "tiny") is not None
