"""AppArgs from a validated MultimodalModel: the same for the operator and `mmo up`."""

from __future__ import annotations

import hashlib
import json

from mmo_operator.api.v1alpha1 import Batching, MultimodalModel, engine_of
from mmo_operator.planning import plan_for_model
from mmo_operator.validation import Validated
from mmo_serving.config import (
    AppArgs,
    AutoscalingArgs,
    BatchingArgs,
    CacheArgs,
    HybridArgs,
    IsolationArgs,
    PlacementPlan,
    VllmArgs,
)

# Ray's accelerator names (ray.util.accelerators) of the GPU types the API knows.
RAY_ACCELERATOR_TYPE = {
    "A100-40GB": "A100-40G",
    "A100-80GB": "A100-80G",
    "H100-80GB": "H100",
    "H200-141GB": "H200",
    "L40S-48GB": "L40S",
}


def model_version(model: MultimodalModel) -> str:
    """Changes exactly when the served weights change (part of every cache key)."""
    m = model.spec.model
    key = json.dumps([m.source, m.dtype, m.quantization], separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def vllm_args(model: MultimodalModel) -> VllmArgs:
    spec = model.spec
    settings = spec.serving.vllm
    common = {
        "num_nodes": spec.resources.nodes_per_replica,
        "accelerator_type": RAY_ACCELERATOR_TYPE[spec.resources.gpu_type],
        "expert_placement": spec.experts.placement,
        "redundant_experts": spec.experts.redundant_experts,
        "rebalance_interval_s": spec.experts.rebalance.interval_seconds,
    }
    if settings is None:
        return VllmArgs(**common)
    return VllmArgs(
        **common,
        tensor_parallel_size=settings.tensor_parallel_size,
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        all2all_backend=settings.all2all_backend,
        engine_args=dict(settings.engine_args or {}),
    )


def batching_args(batching: Batching) -> BatchingArgs:
    """``spec.batching`` field by field, by name; ``*_ms`` becomes ``*_s`` in seconds."""
    fields: dict[str, float] = {}
    for name, value in batching.model_dump().items():
        if name.endswith("_ms"):
            fields[name.removesuffix("_ms") + "_s"] = value / 1000
        else:
            fields[name] = value
    return BatchingArgs(**fields)


def build_app_args(model: MultimodalModel, plan: PlacementPlan | None) -> AppArgs:
    spec = model.spec
    engine = engine_of(spec)
    iso = spec.isolation
    hybrid = None
    if iso.hybrid is not None:
        hybrid = HybridArgs(
            endpoint=iso.hybrid.endpoint,
            offload_data_classes=list(iso.hybrid.offload_data_classes),
            redact_pii=iso.hybrid.redact_pii,
            queue_threshold=iso.hybrid.offload_queue_threshold,
        )
    auto = spec.autoscaling
    return AppArgs(
        name=model.name,
        model_source=spec.model.source,
        engine=engine,
        vllm=vllm_args(model) if engine == "vllm" else None,
        model_version=model_version(model),
        dtype=spec.model.dtype,
        quantization=spec.model.quantization,
        modalities=list(spec.model.modalities),
        num_gpus=spec.total_gpus,
        placement=plan,
        batching=batching_args(spec.batching),
        autoscaling=AutoscalingArgs(
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas,
            target_ongoing_requests=auto.target_ongoing_requests,
            upscale_delay_s=auto.upscale_delay_seconds,
            downscale_delay_s=auto.downscale_delay_seconds,
            # room for a full batch in flight and one queued
            max_ongoing_requests=max(
                2 * spec.batching.max_batch_size, auto.target_ongoing_requests
            ),
        ),
        cache=CacheArgs(
            enabled=spec.cache.enabled,
            max_entries=spec.cache.max_entries,
            ttl_seconds=spec.cache.ttl_seconds,
        ),
        isolation=IsolationArgs(
            mode=iso.mode,
            default_data_class=iso.default_data_class,
            images_sensitive=iso.images_sensitive,
            hybrid=hybrid,
            audit_enabled=iso.audit.enabled,
        ),
        port=spec.serving.port,
        max_request_bytes=spec.serving.max_request_bytes,
    )


def plan_and_app_args(
    validated: Validated, *, loads: object = None
) -> tuple[PlacementPlan, AppArgs]:
    """Placement plan (uniform load unless ``loads``) and the AppArgs that carry it."""
    plan = plan_for_model(validated.model, validated.architecture, validated.capacity, loads=loads)
    return plan, build_app_args(validated.model, plan)
