"""AppArgs: the only thing the operator passes to the serving app.

Serialised into ``serveConfigV2.applications[].args`` by the operator and built the same
way by ``mmo up``. Pure: no ray, no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

EMPTY_SLOT = -1
# Room for one image of the default max_image_bytes (8 MiB) as base64 in a data: URL.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
# The audit trail's digest key (mmo_serving.gateway.audit), mounted from a Secret.
AUDIT_KEY_ENV = "MMO_AUDIT_KEY"

# int8/int4: the built-in engine's own; the others name a checkpoint format vLLM runs
Quantization = Literal[
    "none",
    "int8",
    "int4",
    "awq-int4",
    "gptq-int4",
    "w4a16",
    "w8a8-int8",
    "fp8",
    "experts-int8",
]
DataClass = Literal["public", "internal", "sensitive"]
IsolationMode = Literal["private", "hybrid", "federated"]
Modality = Literal["text", "image"]
Placement = Literal["balanced", "contiguous", "roundRobin"]
Engine = Literal["mmo", "vllm"]


def _public_only() -> list[DataClass]:
    return ["public"]


def _text_and_image() -> list[Modality]:
    return ["text", "image"]


class _Camel(BaseModel):
    """JSON in camelCase (as in the CRD and status), Python attributes in snake_case."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=False
    )


class LayerPlacement(_Camel):
    """Where the experts of one MoE layer live.

    ``slots[s]`` is the logical expert held by physical slot ``s``; slot ``s`` lives on
    GPU ``s // slots_per_gpu`` (``EMPTY_SLOT`` marks an unused slot). ``gpu_load`` is the
    expected load of each GPU when an expert's tokens are split evenly over its copies.
    """

    layer: int = Field(ge=0, description="MoE layer index (0-based, MoE layers only).")
    slots: list[int] = Field(description="Physical slot -> logical expert.")
    replicas: list[int] = Field(description="Copies of each logical expert.")
    gpu_load: list[float] = Field(description="Expected load per GPU.")
    balancedness: float = Field(description="max/mean GPU load; 1.0 is perfect.")
    moved: int = Field(default=0, ge=0, description="Experts copied to a new GPU.")


class PlacementPlan(_Camel):
    """Where every expert lives: the placement the operator plans and the engine loads.

    The same JSON appears in ``mmo plan -o json``, the placement ConfigMap, AppArgs and
    ``status.placement``.
    """

    strategy: Placement
    num_gpus: int = Field(ge=1)
    num_nodes: int = Field(default=1, ge=1)
    slots_per_gpu: int = Field(ge=1)
    num_experts: int = Field(ge=1)
    redundant_experts: int = Field(default=0, ge=0)
    layers: list[LayerPlacement]
    balancedness: float = Field(description="Worst layer's max/mean GPU load.")

    @model_validator(mode="after")
    def _slots_consistent(self) -> PlacementPlan:
        total = self.num_gpus * self.slots_per_gpu
        for lp in self.layers:
            if len(lp.slots) != total:
                raise ValueError(
                    f"layer {lp.layer}: {len(lp.slots)} slots, expected "
                    f"numGpus*slotsPerGpu = {total}"
                )
            if len(lp.replicas) != self.num_experts:
                raise ValueError(
                    f"layer {lp.layer}: replicas has {len(lp.replicas)} entries, "
                    f"expected numExperts = {self.num_experts}"
                )
            bad = [e for e in lp.slots if e != EMPTY_SLOT and not 0 <= e < self.num_experts]
            if bad:
                raise ValueError(f"layer {lp.layer}: slot holds unknown expert {bad[0]}")
        return self

    def gpu_of_slot(self, slot: int) -> int:
        return slot // self.slots_per_gpu

    def experts_on_gpu(self, layer: int, gpu: int) -> list[int]:
        """Logical experts (with repeats for copies) held by one GPU in one layer."""
        lo = gpu * self.slots_per_gpu
        slots = self.layers[layer].slots[lo : lo + self.slots_per_gpu]
        return [e for e in slots if e != EMPTY_SLOT]


# spec.batching's defaults and limits, defined once: the API's Batching, BatchingArgs and
# the built-in engine's @serve.batch decorators take them from here.
DEFAULT_MAX_BATCH_SIZE = 8
MAX_BATCH_SIZE = 1024
DEFAULT_BATCH_WAIT_S = 0.01
MAX_BATCH_WAIT_S = 10.0


class BatchingArgs(_Camel):
    """``spec.batching`` as the replica takes it: each field has the API's name, with
    ``_s`` (seconds) where the API's ends in ``_ms``; the operator copies them by name."""

    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    batch_wait_timeout_s: float = Field(default=DEFAULT_BATCH_WAIT_S, ge=0.0, le=MAX_BATCH_WAIT_S)


class AutoscalingArgs(_Camel):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=8, gt=0)
    upscale_delay_s: float = Field(default=30, ge=0)
    downscale_delay_s: float = Field(default=300, ge=0)
    max_ongoing_requests: int = Field(default=32, ge=1)

    def serve_autoscaling_config(self) -> dict[str, float]:
        """Serve's ``autoscaling_config``: the same for the RayService and `mmo up`."""
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(self.min_replicas, 1),
            "max_replicas": max(self.max_replicas, self.min_replicas, 1),
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }


class CacheArgs(_Camel):
    enabled: bool = True
    max_entries: int = Field(default=1024, ge=1)
    ttl_seconds: float = Field(default=300, gt=0)


class HybridArgs(_Camel):
    endpoint: str
    offload_data_classes: list[DataClass] = Field(default_factory=_public_only)
    redact_pii: bool = True
    # In a cluster the credentials Secret is mounted as this environment variable; under
    # `mmo up` the user exports it.
    credentials_env: str = "MMO_CLOUD_API_KEY"
    ca_bundle: str | None = None
    # Model name sent to the endpoint; None keeps the request's `model`.
    model: str | None = None
    queue_threshold: int = Field(default=16, ge=0)
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)


class IsolationArgs(_Camel):
    mode: IsolationMode = "private"
    default_data_class: DataClass = "internal"
    images_sensitive: bool = True
    hybrid: HybridArgs | None = None
    audit_enabled: bool = True
    audit_path: str | None = Field(default=None, description="None: audit lines to stdout.")


class RuntimeConfig(_Camel):
    """The Serve deployment's ``user_config``: what can change without restarting the
    replica (applied by the ingress's ``reconfigure``)."""

    batching: BatchingArgs | None = None
    placement: PlacementPlan | None = None


EngineArgValue = str | bool | int | float


class VllmArgs(_Camel):
    """What the vLLM engine needs beyond the common fields (engine vllm only); turned
    into Ray Serve LLM's ``LLMConfig`` by :func:`mmo_serving.vllm_args.llm_config`."""

    tensor_parallel_size: int = Field(default=1, ge=1)
    num_nodes: int = Field(default=1, ge=1, description="Nodes one replica spans.")
    accelerator_type: str | None = Field(
        default=None, description="Ray's accelerator name of the GPUs, e.g. A100-80G."
    )
    expert_placement: Placement = "balanced"
    redundant_experts: int = Field(default=0, ge=0)
    rebalance_interval_s: float = Field(
        default=300, gt=0, description="How often balanced placement re-places experts."
    )
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    all2all_backend: str | None = None
    engine_args: dict[str, EngineArgValue] = Field(
        default_factory=dict, description="Passed to vLLM last, by their snake_case names."
    )


class AppArgs(_Camel):
    """Everything the Serve app needs, validated before anything starts."""

    name: str = Field(description="Served model name (the MultimodalModel's name).")
    model_source: str = Field(description="builtin://NAME, pvc://CLAIM/PATH or a local path.")
    engine: Engine = Field(
        default="mmo",
        description="mmo: the built-in expert-parallel engine (builtin:// models); "
        "vllm: Ray Serve LLM running vLLM (real checkpoints).",
    )
    model_version: str = Field(default="1", description="Part of every cache key.")
    dtype: Literal["bfloat16", "float16", "float32"] = "float32"
    quantization: Quantization = "none"
    modalities: list[Modality] = Field(default_factory=_text_and_image)
    num_gpus: int = Field(default=1, ge=1, description="Expert-parallel ranks per replica.")
    placement: PlacementPlan | None = None
    batching: BatchingArgs = Field(default_factory=BatchingArgs)
    autoscaling: AutoscalingArgs = Field(default_factory=AutoscalingArgs)
    cache: CacheArgs = Field(default_factory=CacheArgs)
    isolation: IsolationArgs = Field(default_factory=IsolationArgs)
    max_new_tokens: int = Field(default=8, ge=1, le=512)
    max_image_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=1,
        description="Largest request body the front reads (413 above it).",
    )
    port: int = Field(default=8000, ge=1, le=65535)
    vllm: VllmArgs | None = Field(default=None, description="Engine vllm's settings.")

    @model_validator(mode="after")
    def _placement_matches_gpus(self) -> AppArgs:
        if self.placement is not None and self.placement.num_gpus != self.num_gpus:
            raise ValueError(
                f"placement.numGpus={self.placement.num_gpus} but numGpus={self.num_gpus}"
            )
        return self

    def to_json_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json", by_alias=True)
