"""``serving.mmo.dev/v1alpha1`` ``MultimodalModel``: the single source of truth.

The CRD is generated from these models (``mmo crd``); field descriptions become the
CRD's descriptions and the README's field reference. Cross-field rules live in
``rules.py`` so that each Python check sits next to the CEL rule that mirrors it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel

from mmo_serving.config import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    MAX_BATCH_SIZE,
    MAX_BATCH_WAIT_S,
    DataClass,
    Engine,
    IsolationMode,
    Modality,
    Placement,
    Quantization,
)

GROUP = "serving.mmo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MultimodalModel"
PLURAL = "multimodalmodels"
SINGULAR = "multimodalmodel"
SHORT_NAMES = ["mmm"]

GpuType = Literal["A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB", "L40S-48GB"]
Dtype = Literal["bfloat16", "float16", "float32"]
Attention = Literal["mla", "gqa"]
# vLLM 0.29's --all2all-backend choices (vllm.config.parallel.All2AllBackend)
All2AllBackend = Literal[
    "naive",
    "pplx",
    "allgather_reducescatter",
    "deepep_high_throughput",
    "deepep_low_latency",
    "deepep_v2",
    "mori_high_throughput",
    "mori_low_latency",
    "nixl_ep",
    "flashinfer_nvlink_two_sided",
    "flashinfer_nvlink_one_sided",
]

SOURCE_SCHEMES = ("builtin://", "pvc://", "s3://", "hf://", "https://", "file://")
# A directory on this machine: for `mmo up` only (admission refuses it in a cluster)
LOCAL_SOURCE = "file://"
_SOURCE_PATTERN = r"^(builtin://[a-z0-9][a-z0-9-]*|pvc://[a-z0-9][a-z0-9.-]*/.+|s3://[a-z0-9][a-z0-9.-]*/.+|hf://[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|https://.+|file:///.+)$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_CIDR = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$|^[0-9a-fA-F:]+/[0-9]{1,3}$"
_HTTP_URL = r"^https?://.+"
_SEMVER = r"^\d+\.\d+\.\d+$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

# What each pattern means, for error messages (a regex is no help to a person).
PATTERN_HINTS = {
    _SOURCE_PATTERN: "expected builtin://NAME, pvc://CLAIM/PATH, s3://BUCKET/PATH, "
    "hf://ORG/NAME, https://URL or file:///ABSOLUTE/DIR (mmo up only)",
    _DNS_LABEL: "expected a DNS label: lowercase letters, digits and '-', starting and "
    "ending with a letter or digit",
    _CIDR: "expected a CIDR with its prefix length, e.g. 10.0.0.0/16 or 2001:db8::/32",
    _HTTP_URL: "expected an http:// or https:// URL",
    _SEMVER: "expected a version like 2.55.1",
    _LABEL_VALUE: "expected a label value: letters, digits, '-', '_' and '.', starting and "
    "ending with a letter or digit",
}


def _text_and_image() -> list[Modality]:
    return ["text", "image"]


def _public_only() -> list[DataClass]:
    return ["public"]


Name = Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)]
Cidr = Annotated[str, Field(max_length=64, pattern=_CIDR)]
LabelValue = Annotated[str, Field(max_length=63, pattern=_LABEL_VALUE)]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )


# --- spec.model -----------------------------------------------------------------------


class Architecture(ApiModel):
    """Sizes of the model; optional for ``builtin://`` models, whose sizes the package knows."""

    total_params: int = Field(ge=1, description="Total parameter count (all experts included).")
    active_params: int = Field(ge=1, description="Parameters used per token.")
    num_layers: int = Field(ge=1, le=1024, description="Transformer layers.")
    num_moe_layers: int | None = Field(
        default=None, ge=1, le=1024, description="Layers with routed experts (default: all)."
    )
    num_experts: int = Field(ge=1, le=4096, description="Routed experts per MoE layer.")
    experts_per_token: int = Field(ge=1, le=64, description="Routed experts chosen per token.")
    shared_experts: int = Field(default=0, ge=0, le=64, description="Always-on experts per layer.")
    hidden_size: int | None = Field(default=None, ge=1, description="Model width.")
    expert_intermediate_size: int | None = Field(
        default=None, ge=1, description="Intermediate width of one expert's feed-forward."
    )
    vocab_size: int | None = Field(default=None, ge=1, description="Tokenizer vocabulary size.")
    attention: Attention | None = Field(
        default=None,
        description="mla (multi-head latent attention: kvLoraRank, qkRopeHeadDim) or gqa "
        "(grouped-query: numKvHeads, headDim); with its sizes the KV cache is planned.",
    )
    num_kv_heads: int | None = Field(
        default=None, ge=1, le=1024, description="Key/value heads (gqa)."
    )
    head_dim: int | None = Field(default=None, ge=1, le=4096, description="Head size (gqa).")
    kv_lora_rank: int | None = Field(
        default=None, ge=1, le=65536, description="Compressed key/value width (mla)."
    )
    qk_rope_head_dim: int | None = Field(
        default=None, ge=0, le=4096, description="Rotary part of each key (mla)."
    )

    @property
    def moe_layers(self) -> int:
        return self.num_moe_layers if self.num_moe_layers is not None else self.num_layers

    def kv_values_per_token(self) -> int | None:
        """Cached values per token in all layers; None when the sizes are not given.

        mla caches one compressed vector (kvLoraRank + qkRopeHeadDim) per layer; gqa a key
        and a value per key/value head (2 x numKvHeads x headDim)."""
        if self.attention == "mla" and self.kv_lora_rank and self.qk_rope_head_dim is not None:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        if self.attention == "gqa" and self.num_kv_heads and self.head_dim:
            return self.num_layers * 2 * self.num_kv_heads * self.head_dim
        return None


class S3Source(ApiModel):
    """Where to read an ``s3://`` source from."""

    endpoint: str = Field(
        max_length=512, pattern=_HTTP_URL, description="S3-compatible endpoint URL."
    )
    credentials_secret: Name = Field(
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )


class ModelSpec(ApiModel):
    """Which model to serve and in what precision."""

    source: str = Field(
        max_length=1024,
        pattern=_SOURCE_PATTERN,
        description=(
            "Model weights: builtin://NAME (shipped in the package), pvc://CLAIM/PATH, "
            "s3://BUCKET/PATH (with s3), hf://ORG/NAME, https://URL, or file:///ABSOLUTE/DIR "
            "(a checkpoint directory on this machine: mmo up only, refused in a cluster)."
        ),
    )
    s3: S3Source | None = Field(default=None, description="Required for s3:// sources.")
    architecture: Architecture | None = Field(
        default=None, description="Model sizes; required unless the source is builtin://."
    )
    modalities: list[Modality] = Field(
        default_factory=_text_and_image,
        min_length=1,
        max_length=2,
        description="Input modalities served.",
        json_schema_extra={"x-kubernetes-list-type": "set"},  # the API server refuses repeats
    )
    dtype: Dtype = Field(default="bfloat16", description="Weight and activation precision.")
    quantization: Quantization = Field(
        default="none",
        description="Weight quantization of linear layers. int8, int4: the built-in engine's. "
        "For vLLM, the checkpoint's format: awq-int4, gptq-int4, w4a16 (int4 weights), "
        "w8a8-int8, fp8 (W8A8, compute capability 8.9+), experts-int8 (routed experts "
        "quantized on load).",
    )

    @field_validator("modalities")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate modality in {v}; each of text, image at most once")
        return v


# --- spec.resources / experts / batching / autoscaling / cache ------------------------


class Resources(ApiModel):
    """The GPUs one replica of the model runs on."""

    gpu_type: GpuType = Field(default="A100-80GB", description="GPU model of the nodes.")
    gpus_per_node: int = Field(default=8, ge=1, le=8, description="GPUs used on each node.")
    nodes_per_replica: int = Field(default=1, ge=1, le=64, description="Nodes per replica.")
    headroom_fraction: float = Field(
        default=0.15,
        ge=0.0,
        le=0.9,
        description="Share of each GPU's memory kept free for activations and KV cache.",
    )
    cpus_per_gpu: int = Field(
        default=4, ge=1, le=64, description="CPU cores a worker pod requests per GPU."
    )
    memory_per_gpu_gi: int = Field(
        default=16,
        ge=1,
        le=2048,
        description="Host memory (GiB) a worker pod requests per GPU; half of it backs /dev/shm.",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        json_schema_extra={"minProperties": 1},
        description="Node labels (label -> value) the GPU worker pods select, instead of "
        "the default node affinity on nvidia.com/gpu.product (every product name of "
        "gpuType); for clusters that label their GPU nodes differently.",
    )

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value == {}:
            raise ValueError(
                "give at least one label: value, or leave nodeSelector out to select "
                "the nodes of gpuType by nvidia.com/gpu.product"
            )
        for key in value or {}:
            name = key.rsplit("/", 1)[-1]
            if not _LABEL_KEY.match(key) or len(key) - len(name) > 254:
                raise ValueError(
                    f"{key!r} is not a label key: [PREFIX/]NAME, NAME up to 63 letters, "
                    "digits, '-', '_' or '.', starting and ending with a letter or digit, "
                    "PREFIX a DNS subdomain"
                )
        return value


class Rebalance(ApiModel):
    """Live re-placement of experts from observed load."""

    enabled: bool = Field(default=False, description="Re-plan placement from observed load.")
    interval_seconds: int = Field(
        default=300, ge=30, le=86400, description="How often load is read."
    )
    min_improvement: float = Field(
        default=0.05,
        ge=0.0,
        le=10.0,
        description="Apply a new plan only when balancedness improves by at least this.",
    )


class Experts(ApiModel):
    """How experts are placed on the GPUs."""

    placement: Placement = Field(default="balanced", description="Placement strategy.")
    redundant_experts: int = Field(
        default=0, ge=0, le=4096, description="Extra copies of hot experts per MoE layer."
    )
    rebalance: Rebalance = Field(default_factory=Rebalance, description="Live rebalancing.")


class Batching(ApiModel):
    """Dynamic batching of requests (changes apply in place).

    Each field reaches the replica as the field of ``BatchingArgs`` with the same name
    (``_ms`` becomes ``_s``): a new field is added here and there, and where it acts."""

    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, description="Requests per batch."
    )
    batch_wait_timeout_ms: int = Field(
        default=round(DEFAULT_BATCH_WAIT_S * 1000),
        ge=0,
        le=round(MAX_BATCH_WAIT_S * 1000),
        description="Longest wait to fill a batch.",
    )


class Autoscaling(ApiModel):
    """Replica autoscaling (each replica takes one full set of GPUs)."""

    min_replicas: int = Field(default=1, ge=0, le=100, description="Fewest replicas.")
    max_replicas: int = Field(default=1, ge=1, le=100, description="Most replicas.")
    target_ongoing_requests: int = Field(
        default=8, ge=1, le=10000, description="Ongoing requests per replica to aim for."
    )
    upscale_delay_seconds: int = Field(
        default=30, ge=0, le=3600, description="Wait before adding a replica."
    )
    downscale_delay_seconds: int = Field(
        default=300, ge=0, le=86400, description="Wait before removing a replica."
    )
    latency_target_ms: int = Field(
        default=1000, ge=1, le=600000, description="p95 latency target (alerts, dashboards)."
    )


class Cache(ApiModel):
    """Response cache (never shared across data classes or tenants)."""

    enabled: bool = Field(default=True, description="Cache responses.")
    max_entries: int = Field(default=1024, ge=1, le=10_000_000, description="LRU size.")
    ttl_seconds: int = Field(default=300, ge=1, le=604800, description="Entry lifetime.")


# --- spec.isolation ---------------------------------------------------------------------


class Hybrid(ApiModel):
    """Cloud offload for hybrid mode."""

    endpoint: str = Field(
        max_length=512, description="OpenAI-compatible cloud endpoint (https only)."
    )
    cidrs: list[Cidr] = Field(
        min_length=1, max_length=64, description="Egress CIDRs of the endpoint."
    )
    credentials_secret: Name = Field(description="Secret holding the endpoint's API key.")
    offload_data_classes: list[DataClass] = Field(
        default_factory=_public_only,
        max_length=3,
        description="Data classes that may be offloaded (sensitive never leaves).",
    )
    redact_pii: bool = Field(
        default=True, alias="redactPII", description="Redact PII before offloading."
    )
    offload_queue_threshold: int = Field(
        default=16,
        ge=0,
        le=100000,
        description="Offload the listed classes while more requests than this wait "
        "locally; a client can also ask with X-Route: cloud.",
    )


class DifferentialPrivacy(ApiModel):
    """Clipping and Gaussian noise applied to every update before it leaves the site."""

    clip_norm: float = Field(default=1.0, gt=0, le=100, description="L2 clip of each update.")
    noise_multiplier: float = Field(
        default=1.0, ge=0, le=100, description="Noise std as a multiple of clipNorm."
    )


class Federated(ApiModel):
    """Federated fine-tuning with a Flower aggregator."""

    aggregator: str = Field(max_length=512, description="Flower SuperLink address, host:port.")
    cidrs: list[Cidr] = Field(
        min_length=1, max_length=64, description="Egress CIDRs of the aggregator."
    )
    min_clients: int = Field(default=3, ge=1, le=10000, description="Sites per round.")
    rounds: int = Field(default=10, ge=1, le=100000, description="Federated rounds.")
    differential_privacy: DifferentialPrivacy = Field(
        default_factory=DifferentialPrivacy, description="Update clipping and noise."
    )
    secure_aggregation: bool = Field(
        default=False,
        description="Aggregate with Flower SecAgg+: the aggregator learns only the mean of "
        "minClients (>= 4) masked updates; each site adds 1/sqrt(minClients) of the noise.",
    )


class LabelSelectorRequirement(ApiModel):
    key: str = Field(max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[Annotated[str, Field(max_length=63)]] | None = Field(default=None, max_length=64)


class LabelSelector(ApiModel):
    """A Kubernetes label selector."""

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, max_length=64
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=64)


class AllowedClients(ApiModel):
    """Pods allowed to call the endpoint (namespace and pod selectors are ANDed)."""

    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces of the clients (omit: this namespace)."
    )
    pod_selector: LabelSelector | None = Field(
        default=None, description="Client pods (omit: every pod of those namespaces)."
    )


class Audit(ApiModel):
    """Append-only record of every isolation decision (never raw content)."""

    enabled: bool = Field(default=True, description="Write one JSON line per decision.")
    key_secret: Name | None = Field(
        default=None,
        description="Secret whose key `key` keys the trail's payload digests (HMAC-SHA256), "
        "mounted as MMO_AUDIT_KEY (omit: NAME-audit-key). Without the Secret each replica "
        "keys with a random key of its own.",
    )


class Isolation(ApiModel):
    """Data-isolation mode and its policy."""

    mode: IsolationMode = Field(default="private", description="private, hybrid or federated.")
    hybrid: Hybrid | None = Field(default=None, description="Required exactly in hybrid mode.")
    federated: Federated | None = Field(
        default=None, description="Required exactly in federated mode."
    )
    allowed_clients: list[AllowedClients] | None = Field(
        default=None, max_length=32, description="Who may call the endpoint (omit: nobody)."
    )
    default_data_class: DataClass = Field(
        default="internal", description="Data class of a request without X-Data-Class."
    )
    images_sensitive: bool = Field(
        default=True, description="A request with an image is sensitive (never offloaded)."
    )
    audit: Audit = Field(default_factory=Audit, description="Audit trail.")


# --- spec.serving / monitoring ------------------------------------------------------------


# A scalar engine argument. The CRD keeps any value (structural schemas have no "one of
# string, number, boolean"); `mmo validate` and the webhook refuse lists and mappings.
def _scalar(value: object) -> str | bool | int | float:
    if not isinstance(value, str | bool | int | float):
        raise ValueError("expected a string, number or true/false")
    return value


EngineArgValue = Annotated[
    str | bool | int | float,
    PlainValidator(_scalar),
    WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True}),
]


class Vllm(ApiModel):
    """Settings of the vLLM engine (engine vllm only)."""

    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=10_000_000,
        description="Longest prompt plus answer in tokens; sizes the KV cache that admission "
        "checks (omit: the checkpoint's own limit, not checked).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Share of each GPU's memory vLLM takes for weights, activations and KV cache.",
    )
    all2all_backend: All2AllBackend | None = Field(
        default=None,
        alias="all2allBackend",
        description="Expert-parallel all-to-all kernels (omit: vLLM's default, "
        "allgather_reducescatter).",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="GPUs per data-parallel rank; the replica's GPUs divided by it give the "
        "data-parallel size.",
    )
    engine_args: dict[str, EngineArgValue] | None = Field(
        default=None,
        max_length=64,
        description="More vLLM engine arguments by their snake_case name (scalars only); "
        "names mmo sets from other fields are refused.",
    )


class Serving(ApiModel):
    """The Ray cluster that serves the model."""

    engine: Engine | None = Field(
        default=None,
        description="mmo: the built-in engine (builtin:// sources only); vllm: vLLM on Ray "
        "Serve LLM (checkpoints: pvc://, s3://, hf://, https://, file://). Omitted: mmo for "
        "builtin:// sources, vllm for every other source.",
    )
    vllm: Vllm | None = Field(default=None, description="vLLM settings (engine vllm only).")

    image: str = Field(
        default="ghcr.io/mmo-dev/mmo-serving:0.1.0",
        max_length=512,
        description="Serving image (Ray + mmo_serving).",
    )
    ray_version: str = Field(
        default="2.60.0", max_length=32, pattern=_SEMVER, description="Ray version."
    )
    port: int = Field(default=8000, ge=1024, le=65535, description="Serve HTTP port.")
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest request body the endpoint reads; larger ones get 413 (default "
        "16 MiB: room for one 8 MiB image as a base64 data: URL).",
    )


class Monitoring(ApiModel):
    """Prometheus integration."""

    pod_monitor: bool = Field(
        default=True, description="Create a PodMonitor (when the monitoring CRDs exist)."
    )


class MultimodalModelSpec(ApiModel):
    """Desired state of a MultimodalModel."""

    model: ModelSpec = Field(description="The model and its precision.")
    resources: Resources = Field(default_factory=Resources, description="GPUs per replica.")
    experts: Experts = Field(default_factory=Experts, description="Expert placement.")
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Autoscaling.")
    cache: Cache = Field(default_factory=Cache, description="Response cache.")
    isolation: Isolation = Field(default_factory=Isolation, description="Data isolation.")
    serving: Serving = Field(default_factory=Serving, description="Serving runtime.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Monitoring.")

    @property
    def total_gpus(self) -> int:
        return self.resources.gpus_per_node * self.resources.nodes_per_replica


# --- status ---------------------------------------------------------------------------


class Condition(ApiModel):
    type: str = Field(max_length=64)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=128)
    message: str = Field(default="", max_length=4096)
    last_transition_time: str | None = Field(default=None, max_length=64)
    observed_generation: int | None = Field(default=None, ge=0)


class CapacityStatus(ApiModel):
    fits: bool
    gpus: int
    gpu_memory_bytes: int
    bytes_per_gpu: int
    dense_bytes: int
    expert_bytes: int
    expert_slots_per_gpu: int
    message: str = ""


class PlacementStatus(ApiModel):
    strategy: str
    balancedness: float
    balancedness_before: float | None = None
    moved_experts: int = 0
    slots_per_gpu: int
    config_map: str
    last_rebalance_time: str | None = None


class MultimodalModelStatus(ApiModel):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    capacity: CapacityStatus | None = None
    placement: PlacementStatus | None = None
    endpoint: str | None = None
    ray_service: str | None = None


# --- the resource -----------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """Only what mmo reads; the API server owns the rest."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=63, pattern=_DNS_LABEL)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class MultimodalModel(ApiModel):
    api_version: Literal["serving.mmo.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["MultimodalModel"]
    metadata: ObjectMeta
    spec: MultimodalModelSpec
    status: MultimodalModelStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"


def is_builtin(source: str) -> bool:
    return source.startswith("builtin://")


def engine_of(spec: MultimodalModelSpec) -> Engine:
    """spec.serving.engine, or its default: mmo for builtin:// sources, vllm otherwise."""
    if spec.serving.engine is not None:
        return spec.serving.engine
    return "mmo" if is_builtin(spec.model.source) else "vllm"


def builtin_name(source: str) -> str:
    return re.sub(r"^builtin://", "", source)
