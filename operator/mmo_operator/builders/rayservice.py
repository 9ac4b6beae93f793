"""The KubeRay ``ray.io/v1`` RayService of a MultimodalModel (pure).

Layout:

- a head group without GPUs (``num-cpus: 0``: no Serve replica lands there; the Serve
  controller and the head's HTTP proxy do);
- one worker group ``gpu`` whose pods take ``gpusPerNode`` GPUs of the requested type
  (a node affinity on ``nvidia.com/gpu.product``, or ``spec.resources.nodeSelector``:
  :mod:`.gpu_nodes`), tolerate the GPU taint, mount a
  memory-backed ``/dev/shm``, advertise a Ray custom resource naming the accelerator,
  and run under the restricted Pod Security Standard;
- ``serveConfigV2``: one application ``import_path: mmo_serving.app:build_app``.

What changes in place and what rolls the cluster:

- ``args`` carries the AppArgs fields that need a replica restart (model, precision,
  modalities, cache, isolation, ...); a change redeploys the application on the same
  Ray cluster.
- ``user_config`` carries what the ingress's ``reconfigure`` applies without a restart:
  batching and the placement plan (rebalances too). ``autoscaling_config`` and
  ``max_ongoing_requests`` are Serve's lightweight deployment updates. These fields are
  left out of ``args`` so that changing them never restarts a replica.
- ``rayClusterConfig`` changes (GPU type or count, nodes, image, Ray version, port,
  credentials) need a new Ray cluster. Worker ``replicas``/``minReplicas``/
  ``maxReplicas`` do not: KubeRay leaves them out of its cluster hash, so that the
  autoscaler's replica changes never roll the cluster; but for the same reason it never
  applies a change of the bounds to the running RayCluster. The operator patches
  ``minReplicas``/``maxReplicas`` of the running clusters itself (``worker_bounds``);
  ``replicas`` stays the autoscaler's.

The upgrade strategy is ``NewCluster`` (blue/green: KubeRay starts a second cluster,
moves traffic when it is ready, then deletes the old one; zero downtime, but twice the
GPUs until then). The annotation ``serving.mmo.dev/upgrade-strategy: Recreate`` on the
MultimodalModel selects the other trade-off: ``upgradeStrategy: None`` and the operator
deletes and recreates the RayService (no extra GPUs, downtime while the new cluster
starts and loads the model).
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_serving.config import AUDIT_KEY_ENV, AppArgs
from mmo_serving.deployment import deployment_options

from .common import (
    CLIENT_PORT,
    CLUSTER_HASH_ANNOTATION,
    DASHBOARD_PORT,
    GCS_PORT,
    METRICS_PORT,
    MODEL_LABEL,
    ROLE_LABEL,
    UPGRADE_ANNOTATION,
    Obj,
    digest,
    metadata,
    rayservice_name,
)
from .gpu_nodes import node_placement
from .pod_env import base_env

IMPORT_PATH = "mmo_serving.app:build_app"
WORKER_GROUP = "gpu"
PVC_ROOT = "/mnt/models"
HYBRID_KEY_ENV = "MMO_CLOUD_API_KEY"
HYBRID_SECRET_KEY = "api-key"
AUDIT_SECRET_KEY = "key"
GPU_RESOURCE = "nvidia.com/gpu"
# Ray's health endpoints, as KubeRay's own probes call them: the raylet through the
# dashboard agent on every pod, the GCS through the dashboard on the head.
DASHBOARD_AGENT_PORT = 52365
RAYLET_HEALTH = f"http://localhost:{DASHBOARD_AGENT_PORT}/api/local_raylet_healthz"
GCS_HEALTH = f"http://localhost:{DASHBOARD_PORT}/api/gcs_healthz"
# KubeRay adds liveness and readiness probes that start 30 s after the container does; a
# startup probe holds them until Ray is up, so a worker that waits for the head's GCS (a
# new cluster of an upgrade starts all its pods at once) is not restarted meanwhile. The
# model itself loads later, inside Serve replicas: vllm_args' health timeouts and
# pod_env.VLLM_ENGINE_READY_TIMEOUT_S cover that.
STARTUP_PROBE_PERIOD_S = 10
STARTUP_PROBE_BUDGET_S = 600
# Fields of AppArgs that go to user_config / deployment options instead of args.
IN_PLACE_ARGS = {"placement", "batching", "autoscaling"}

# The Ray autoscaler runs as a sidecar of the head pod and calls the Kubernetes API server
# (networkpolicy.py: the NAME-apiserver NetworkPolicy; status: PolicyEnforced says when
# the operator was not told the API server's addresses).
IN_TREE_AUTOSCALING = True

UpgradeStrategy = Literal["NewCluster", "Recreate"]


def upgrade_strategy(model: MultimodalModel) -> UpgradeStrategy:
    value = (model.metadata.annotations or {}).get(UPGRADE_ANNOTATION, "NewCluster")
    return "Recreate" if value == "Recreate" else "NewCluster"


def accelerator_resource(model: MultimodalModel) -> str:
    """The Ray custom resource that names the accelerator of the worker nodes."""
    return f"mmo-accelerator-{model.spec.resources.gpu_type}"


def audit_secret_name(model: MultimodalModel) -> str:
    """The Secret keying the audit trail's digests: ``isolation.audit.keySecret``."""
    return model.spec.isolation.audit.key_secret or f"{model.name}-audit-key"


def restricted_container_context() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_context() -> Obj:
    # The Ray images run as the `ray` user (uid 1000, group 100).
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 100,
        "fsGroup": 100,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(model: MultimodalModel, *, worker: bool) -> list[Obj]:
    env: list[Obj] = base_env(model)
    source = model.spec.model.source
    if source.startswith("pvc://"):
        env.append({"name": "MMO_PVC_ROOT", "value": PVC_ROOT})
    if not worker:
        return env
    # Optional: without the Secret each replica keys its audit digests with a random key.
    ref = {"name": audit_secret_name(model), "key": AUDIT_SECRET_KEY, "optional": True}
    env.append({"name": AUDIT_KEY_ENV, "valueFrom": {"secretKeyRef": ref}})
    hybrid = model.spec.isolation.hybrid
    if model.spec.isolation.mode == "hybrid" and hybrid is not None:
        ref = {"name": hybrid.credentials_secret, "key": HYBRID_SECRET_KEY}
        env.append({"name": HYBRID_KEY_ENV, "valueFrom": {"secretKeyRef": ref}})
    s3 = model.spec.model.s3
    if source.startswith("s3://") and s3 is not None:
        env.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = {"name": s3.credentials_secret, "key": key}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _ports(model: MultimodalModel, *, head: bool) -> list[Obj]:
    ports = []
    if head:
        ports += [
            {"name": "gcs", "containerPort": GCS_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "client", "containerPort": CLIENT_PORT},
        ]
    ports += [
        {"name": "serve", "containerPort": model.spec.serving.port},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]
    return ports


def startup_probe(*, head: bool) -> Obj:
    checks = [RAYLET_HEALTH, GCS_HEALTH] if head else [RAYLET_HEALTH]
    script = " && ".join(f"wget -T 2 -q -O- {url} | grep success" for url in checks)
    return {
        "exec": {"command": ["bash", "-c", script]},
        "periodSeconds": STARTUP_PROBE_PERIOD_S,
        "timeoutSeconds": 5,
        "failureThreshold": STARTUP_PROBE_BUDGET_S // STARTUP_PROBE_PERIOD_S,
    }


def shm_size_gi(model: MultimodalModel) -> int:
    """/dev/shm of a worker: half its memory (``memoryPerGpuGi`` x GPUs / 2).

    Ray's object store lives there, NCCL's shared-memory transport and vLLM's message
    queues between the front end and its data-parallel ranks too; a memory-backed
    emptyDir counts against the container's memory limit, hence half and not all.
    """
    res = model.spec.resources
    return max(1, res.memory_per_gpu_gi * res.gpus_per_node // 2)


def _pod_labels(model: MultimodalModel, role: str) -> dict[str, str]:
    return {MODEL_LABEL: model.name, ROLE_LABEL: role}


def _head_template(model: MultimodalModel) -> Obj:
    return {
        "metadata": {"labels": _pod_labels(model, "head")},
        "spec": {
            "securityContext": restricted_pod_context(),
            "containers": [
                {
                    "name": "ray-head",
                    "image": model.spec.serving.image,
                    "ports": _ports(model, head=True),
                    "env": _env(model, worker=False),
                    "resources": {
                        "requests": {"cpu": "2", "memory": "8Gi"},
                        "limits": {"memory": "8Gi"},
                    },
                    "securityContext": restricted_container_context(),
                    "startupProbe": startup_probe(head=True),
                    "volumeMounts": [
                        {"name": "shm", "mountPath": "/dev/shm"},
                        {"name": "ray-tmp", "mountPath": "/tmp/ray"},
                    ],
                }
            ],
            "volumes": [
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                {"name": "ray-tmp", "emptyDir": {}},
            ],
        },
    }


def _worker_template(model: MultimodalModel) -> Obj:
    res = model.spec.resources
    gpus = res.gpus_per_node
    mounts: list[Obj] = [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "ray-tmp", "mountPath": "/tmp/ray"},
    ]
    volumes: list[Obj] = [
        # the container runtime's default of 64 MiB is far too small (shm_size_gi)
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_size_gi(model)}Gi"}},
        {"name": "ray-tmp", "emptyDir": {}},
    ]
    source = model.spec.model.source
    if source.startswith("pvc://"):
        claim = source[len("pvc://") :].split("/", 1)[0]
        mounts.append({"name": "model", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    memory = f"{res.memory_per_gpu_gi * gpus}Gi"
    return {
        "metadata": {"labels": _pod_labels(model, "worker")},
        "spec": {
            # Workers never call the API server (the head's autoscaler does): no token.
            "automountServiceAccountToken": False,
            "securityContext": restricted_pod_context(),
            **node_placement(res),
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "ray-worker",
                    "image": model.spec.serving.image,
                    "ports": _ports(model, head=False),
                    "env": _env(model, worker=True),
                    "resources": {
                        "requests": {
                            "cpu": str(res.cpus_per_gpu * gpus),
                            "memory": memory,
                            GPU_RESOURCE: str(gpus),
                        },
                        "limits": {"memory": memory, GPU_RESOURCE: str(gpus)},
                    },
                    "securityContext": restricted_container_context(),
                    "startupProbe": startup_probe(head=False),
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


def build_cluster_config(model: MultimodalModel) -> Obj:
    spec = model.spec
    nodes = spec.resources.nodes_per_replica
    min_workers = spec.autoscaling.min_replicas * nodes
    max_workers = max(spec.autoscaling.max_replicas * nodes, min_workers, 1)
    return {
        "rayVersion": spec.serving.ray_version,
        "enableInTreeAutoscaling": IN_TREE_AUTOSCALING,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 60,
            "securityContext": restricted_container_context(),
        },
        "headGroupSpec": {
            "rayStartParams": {
                "dashboard-host": "0.0.0.0",
                "num-cpus": "0",
                "metrics-export-port": str(METRICS_PORT),
            },
            "template": _head_template(model),
        },
        "workerGroupSpecs": [
            {
                "groupName": WORKER_GROUP,
                "replicas": min_workers,
                "minReplicas": min_workers,
                "maxReplicas": max_workers,
                "numOfHosts": 1,
                "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
                "resources": {accelerator_resource(model): str(spec.resources.gpus_per_node)},
                "template": _worker_template(model),
            }
        ],
    }


def cluster_hash(cluster: Obj) -> str:
    """Hash of what needs a new Ray cluster (worker replica counts excluded, as KubeRay)."""
    groups = [
        {k: v for k, v in g.items() if k not in ("replicas", "minReplicas", "maxReplicas")}
        for g in cluster.get("workerGroupSpecs", [])
    ]
    return digest({**cluster, "workerGroupSpecs": groups})


def deployment_config(model: MultimodalModel, args: AppArgs) -> Obj:
    """The ingress deployment's options (:func:`mmo_serving.deployment.deployment_options`)
    pinned to this model's GPU type and node layout."""
    return deployment_options(
        args,
        accelerator=accelerator_resource(model),
        nodes_per_replica=model.spec.resources.nodes_per_replica,
    )


def build_serve_config(model: MultimodalModel, args: AppArgs) -> Obj:
    """The Serve config (``ServeDeploySchema``) as a dict."""
    app_args = args.model_dump(mode="json", by_alias=True, exclude=IN_PLACE_ARGS)
    return {
        "http_options": {"host": "0.0.0.0", "port": model.spec.serving.port},
        "applications": [
            {
                "name": model.name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": app_args,
                "deployments": [deployment_config(model, args)],
            }
        ],
    }


def build_rayservice(model: MultimodalModel, args: AppArgs, uid: str | None = None) -> Obj:
    cluster = build_cluster_config(model)
    serve = build_serve_config(model, args)
    strategy = upgrade_strategy(model)
    meta = metadata(model, rayservice_name(model), uid)
    meta["annotations"] = {CLUSTER_HASH_ANNOTATION: cluster_hash(cluster)}
    spec: dict[str, Any] = {
        "upgradeStrategy": {"type": "NewCluster" if strategy == "NewCluster" else "None"},
        "serveConfigV2": yaml.safe_dump(serve, sort_keys=False, default_flow_style=None, width=100),
        "rayClusterConfig": cluster,
    }
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": meta, "spec": spec}
