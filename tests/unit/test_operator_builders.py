"""Pure builders of the operator's children, and the reconcile's comparison helpers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

from mmo_operator.builders import build_children
from mmo_operator.builders.app_args import plan_and_app_args
from mmo_operator.builders.common import HASH_ANNOTATION
from mmo_operator.builders.rayservice import cluster_hash
from mmo_operator.diff import contains, needs_apply
from mmo_operator.planning.current import plan_in_force
from mmo_operator.validation import validate
from mmo_operator.worker_bounds import bounds_patch, serving_clusters, worker_bounds

TINY = Path(__file__).resolve().parents[1] / "k8s" / "data" / "tiny.yaml"
UID = "11111111-2222-3333-4444-555555555555"


def _doc(**spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(TINY.read_text())
    for path, value in spec.items():
        cur = doc["spec"]
        *parents, last = path.split("__")
        for part in parents:
            cur = cur.setdefault(part, {})
        cur[last] = value
    return doc


def _children(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    v = validate(doc)
    plan, args = plan_and_app_args(v)
    return {
        c["kind"] + "/" + c["metadata"]["name"]: c
        for c in build_children(v.model, plan, args=args, uid=UID)
    }


def _worker(children: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rs = children["RayService/tiny"]
    pod: dict[str, Any] = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    return pod


def test_every_child_is_labelled_owned_and_hashed() -> None:
    for key, child in _children(_doc()).items():
        meta = child["metadata"]
        assert meta["labels"]["serving.mmo.dev/model"] == "tiny", key
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "mmo-operator", key
        assert meta["ownerReferences"][0]["uid"] == UID, key
        assert meta["annotations"][HASH_ANNOTATION], key


def test_gpu_type_selects_every_product_name_of_that_gpu() -> None:
    from mmo_operator.builders.gpu_nodes import GPU_PRODUCTS

    assert set(GPU_PRODUCTS) == {"A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB", "L40S-48GB"}
    for gpu_type, products in GPU_PRODUCTS.items():
        pod = _worker(_children(_doc(resources__gpuType=gpu_type)))["spec"]
        affinity = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (expr,) = affinity["nodeSelectorTerms"][0]["matchExpressions"]
        assert expr == {"key": "nvidia.com/gpu.product", "operator": "In", "values": list(products)}


def test_node_selector_replaces_the_gpu_affinity() -> None:
    labels = {"gpu.example.com/model": "a100-80g", "pool": "inference"}
    children = _children(_doc(resources__nodeSelector=labels))
    pod = _worker(children)["spec"]
    assert pod["nodeSelector"] == labels
    assert "affinity" not in pod
    before = _children(_doc())["RayService/tiny"]["metadata"]["annotations"]
    after = children["RayService/tiny"]["metadata"]["annotations"]
    assert after["serving.mmo.dev/cluster-hash"] != before["serving.mmo.dev/cluster-hash"]


def test_gpu_workers_and_head() -> None:
    children = _children(_doc())
    cluster = children["RayService/tiny"]["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pod = _worker(children)["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "nodeSelector" not in pod
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {
                    "key": "nvidia.com/gpu.product",
                    "operator": "In",
                    "values": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"],
                }
            ]
        }
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the workers never call the API server: no token; the head runs the Ray autoscaler
    assert pod["automountServiceAccountToken"] is False
    assert "automountServiceAccountToken" not in cluster["headGroupSpec"]["template"]["spec"]
    assert cluster["workerGroupSpecs"][0]["resources"] == {"mmo-accelerator-A100-80GB": "8"}
    assert cluster["enableInTreeAutoscaling"] is True
    assert any(m["mountPath"] == "/mnt/models/models" for m in container["volumeMounts"])
    assert container["resources"]["requests"]["cpu"] == "32"  # 4 per GPU by default
    assert container["resources"]["limits"]["memory"] == "128Gi"
    assert shm["emptyDir"]["sizeLimit"] == "64Gi"


def test_worker_cpu_and_memory_follow_the_spec() -> None:
    children = _children(_doc(resources__cpusPerGpu=12, resources__memoryPerGpuGi=120))
    pod = _worker(children)["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "96"
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "960Gi"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["sizeLimit"] == "480Gi"
    base = _children(_doc())["RayService/tiny"]["spec"]["rayClusterConfig"]
    bigger = children["RayService/tiny"]["spec"]["rayClusterConfig"]
    assert cluster_hash(bigger) != cluster_hash(base), "pod resources need a new cluster"


def test_serve_only_fields_leave_the_cluster_config_alone() -> None:
    base = _children(_doc())["RayService/tiny"]
    changed = _children(
        _doc(batching__maxBatchSize=64, autoscaling__maxReplicas=4, cache__ttlSeconds=60)
    )["RayService/tiny"]
    assert cluster_hash(changed["spec"]["rayClusterConfig"]) == cluster_hash(
        base["spec"]["rayClusterConfig"]
    )
    assert changed["spec"]["serveConfigV2"] != base["spec"]["serveConfigV2"]
    gpu = _children(_doc(resources__gpuType="H100-80GB"))["RayService/tiny"]
    assert cluster_hash(gpu["spec"]["rayClusterConfig"]) != cluster_hash(
        base["spec"]["rayClusterConfig"]
    )


def test_batching_and_placement_travel_in_user_config_not_args() -> None:
    rs = _children(_doc(batching__maxBatchSize=64))["RayService/tiny"]
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    assert "batching" not in app["args"] and "placement" not in app["args"]
    user_config = app["deployments"][0]["user_config"]
    assert user_config["batching"]["maxBatchSize"] == 64
    assert user_config["placement"]["numGpus"] == 8


def test_hybrid_workers_read_the_api_key_from_the_secret() -> None:
    doc = _doc(
        isolation={
            "mode": "hybrid",
            "hybrid": {
                "endpoint": "https://llm.example.com/v1",
                "cidrs": ["203.0.113.0/24"],
                "credentialsSecret": "cloud-key",
            },
        }
    )
    env = _worker(_children(doc))["spec"]["containers"][0]["env"]
    key = next(e for e in env if e["name"] == "MMO_CLOUD_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "cloud-key", "key": "api-key"}


def test_workers_key_the_audit_trail_from_a_secret() -> None:
    def audit_ref(doc: dict) -> dict:
        env = _worker(_children(doc))["spec"]["containers"][0]["env"]
        return next(e for e in env if e["name"] == "MMO_AUDIT_KEY")["valueFrom"]["secretKeyRef"]

    doc = _doc()
    default = {"name": f"{doc['metadata']['name']}-audit-key", "key": "key", "optional": True}
    assert audit_ref(doc) == default
    named = audit_ref(_doc(isolation={"audit": {"keySecret": "trail-key"}}))
    assert named == {"name": "trail-key", "key": "key", "optional": True}


def test_pdb_protects_the_min_replicas_floor_and_podmonitor_is_optional() -> None:
    children = _children(_doc(autoscaling__minReplicas=2, autoscaling__maxReplicas=3))
    assert children["PodDisruptionBudget/tiny-workers"]["spec"]["minAvailable"] == 2
    assert "PodMonitor/tiny" in children
    assert "PodMonitor/tiny" not in _children(_doc(monitoring__podMonitor=False))


def test_needs_apply_ignores_server_defaults_but_sees_changes() -> None:
    desired = _children(_doc())["ConfigMap/tiny-placement"]
    observed = copy.deepcopy(desired)
    observed["metadata"].update(resourceVersion="7", uid="x", managedFields=[{}])
    assert not needs_apply(desired, observed)
    assert needs_apply(desired, None)
    drifted = copy.deepcopy(observed)
    drifted["data"]["placement.json"] = "{}"
    assert needs_apply(desired, drifted), "a hand edit is reverted"
    assert contains({"ports": [{"port": 1}]}, {"ports": [{"port": 1, "protocol": "TCP"}]})
    assert not contains({"a": True}, {"a": 1})


def test_needs_apply_accepts_empty_lists_the_api_server_left_out() -> None:
    """A deny-all NetworkPolicy has ``ingress: []``; the API server answers without the
    key (omitempty). Re-applying it on every resync would be a write each minute."""
    deny = copy.deepcopy(_children(_doc())["NetworkPolicy/tiny-network"])
    deny["spec"].update(ingress=[], egress=[])
    served = copy.deepcopy(deny)
    del served["spec"]["ingress"], served["spec"]["egress"]
    assert not needs_apply(deny, served)
    assert contains({"a": {}}, {})
    assert contains({"a": [1]}, {}) is False


def test_plan_in_force_keeps_a_rebalanced_plan_of_the_same_shape() -> None:
    v = validate(_doc())
    plan, _ = plan_and_app_args(v)
    cm = _children(_doc())["ConfigMap/tiny-placement"]
    rebalanced = plan.model_copy(update={"balancedness": 1.01})
    cm_rebalanced = copy.deepcopy(cm)
    cm_rebalanced["data"]["placement.json"] = rebalanced.model_dump_json(by_alias=True)
    assert plan_in_force(cm_rebalanced, plan).balancedness == 1.01
    other = plan.model_copy(update={"strategy": "contiguous"})
    assert plan_in_force(cm_rebalanced, other) is other
    assert plan_in_force(None, plan) is plan


def test_worker_bounds_patch_touches_only_min_and_max_of_the_named_group() -> None:
    rs = _children(_doc(autoscaling={"minReplicas": 1, "maxReplicas": 4}))["RayService/tiny"]
    assert worker_bounds(rs) == {"gpu": (1, 4)}
    cluster = copy.deepcopy(rs["spec"]["rayClusterConfig"])
    other = {"groupName": "cpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 1}
    cluster["workerGroupSpecs"].insert(0, other)
    cluster["workerGroupSpecs"][1].update(replicas=3, minReplicas=1, maxReplicas=2)
    raycluster = {"spec": cluster}
    ops = bounds_patch(raycluster, worker_bounds(rs))
    assert ops[0] == {"op": "test", "path": "/spec/workerGroupSpecs/1/groupName", "value": "gpu"}
    assert {op["path"].rsplit("/", 1)[1] for op in ops} == {
        "groupName",
        "minReplicas",
        "maxReplicas",
    }
    patched = jsonpatch.apply_patch(raycluster, ops)
    expected = copy.deepcopy(raycluster)
    expected["spec"]["workerGroupSpecs"][1]["maxReplicas"] = 4
    assert patched == expected, "replicas (the autoscaler's), the template and cpu untouched"
    assert bounds_patch(patched, worker_bounds(rs)) == []


def test_serving_clusters_are_the_active_then_the_pending_one() -> None:
    assert serving_clusters(None) == ()
    assert serving_clusters({"status": {}}) == ()
    status = {
        "activeServiceStatus": {"rayClusterName": "m-raycluster-aaaaa"},
        "pendingServiceStatus": {"rayClusterName": "m-raycluster-bbbbb"},
    }
    assert serving_clusters({"status": status}) == ("m-raycluster-aaaaa", "m-raycluster-bbbbb")


def _ingress(doc: dict[str, Any]) -> dict[str, Any]:
    rs = _children(doc)["RayService/tiny"]
    deployment: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0][
        "deployments"
    ][0]
    return deployment


def _builtin_doc(**spec: Any) -> dict[str, Any]:
    """tiny.yaml served by the built-in engine (its pvc:// source defaults to vllm)."""
    doc = _doc(**spec)
    doc["spec"]["model"] = {"source": "builtin://shapes-moe", "modalities": ["text"]}
    return doc


def test_multi_gpu_ranks_hold_the_gpus_in_accelerator_bundles() -> None:
    dep = _ingress(_builtin_doc())
    assert dep["name"] == "mmo-ingress"
    assert dep["ray_actor_options"]["num_gpus"] == 0
    bundles = dep["placement_group_bundles"]
    assert len(bundles) == 8
    assert all(b["GPU"] == 1 and b["mmo-accelerator-A100-80GB"] == 1 for b in bundles)
    assert dep["placement_group_strategy"] == "STRICT_PACK"


def test_one_gpu_replica_holds_its_gpu() -> None:
    # the engine runs inside the replica: a bundle GPU that the replica does not hold
    # would be hidden from it
    dep = _ingress(_builtin_doc(resources__gpusPerNode=1))
    assert "placement_group_bundles" not in dep
    assert dep["ray_actor_options"]["num_gpus"] == 1
    assert dep["ray_actor_options"]["resources"] == {"mmo-accelerator-A100-80GB": 1.0}


def test_cluster_and_mmo_up_share_one_deployment_options_function() -> None:
    from mmo_serving.deployment import deployment_options

    v = validate(_doc())
    _plan, args = plan_and_app_args(v)
    dep = _ingress(_doc())
    expected = deployment_options(args, accelerator="mmo-accelerator-A100-80GB")
    assert dep == yaml.safe_load(yaml.safe_dump(expected))


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<secret>") for e in container["env"]}


def test_model_volume_is_mounted_read_only() -> None:
    pod = _worker(_children(_doc()))["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": "/mnt/models/models", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_head_and_workers_hold_kuberays_probes_until_ray_is_up() -> None:
    cluster = _children(_doc())["RayService/tiny"]["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = _worker(_children(_doc()))["spec"]["containers"][0]
    head_script = head["startupProbe"]["exec"]["command"][-1]
    worker_script = worker["startupProbe"]["exec"]["command"][-1]
    assert "local_raylet_healthz" in head_script and "gcs_healthz" in head_script
    assert "local_raylet_healthz" in worker_script and "gcs_healthz" not in worker_script
    probe = worker["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600


def test_every_container_is_offline_and_vllm_waits_for_a_slow_load() -> None:
    for doc, engine in ((_doc(), "vllm"), (_builtin_doc(), "mmo")):
        children = _children(doc)
        cluster = children["RayService/tiny"]["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        worker = _worker(children)["spec"]["containers"][0]
        for container in (head, worker):
            env = _env(container)
            names = [e["name"] for e in container["env"]]
            assert len(names) == len(set(names)), f"duplicate env names: {names}"
            for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS"):
                assert env[key] == "1", (engine, key)
            assert env["DO_NOT_TRACK"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
            if engine == "vllm":
                assert int(env["VLLM_ENGINE_READY_TIMEOUT_S"]) >= 1800
            else:
                assert "VLLM_ENGINE_READY_TIMEOUT_S" not in env


def test_podmonitor_labels_series_with_the_model_and_keeps_vllm_names() -> None:
    endpoint = _children(_doc())["PodMonitor/tiny"]["spec"]["podMetricsEndpoints"][0]
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_serving_mmo_dev_model"],
            "targetLabel": "model",
            "action": "replace",
        }
    ]
    (rename,) = endpoint["metricRelabelings"]
    assert rename["regex"] == "ray_(mmo_.*)" and rename["action"] == "replace"
