"""Cross-field rules, each written once in Python and once in CEL.

The CRD generator attaches every rule's CEL expression as an
``x-kubernetes-validations`` entry at ``at`` (a path below ``spec``), so the API server
refuses what ``mmo validate`` refuses. CEL sees defaulted objects (the CRD carries the
same defaults as the models), so rules may read defaulted fields without ``has()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .v1alpha1 import MultimodalModelSpec, engine_of, is_builtin


@dataclass(frozen=True)
class CrossFieldRule:
    at: tuple[str, ...]  # camelCase path below spec where the CEL rule is attached
    field: str  # camelCase path below ``at`` that the message is about ("" = the node)
    cel: str
    message: str
    holds: Callable[[MultimodalModelSpec], bool]

    @property
    def path(self) -> str:
        parts = ["spec", *self.at]
        if self.field:
            parts.append(self.field)
        return ".".join(parts)


def _mode(s: MultimodalModelSpec) -> str:
    return s.isolation.mode


def _has_arch(s: MultimodalModelSpec) -> bool:
    return s.model.architecture is not None


# CEL for engine_of(spec): the engine given, or the default for the source
_CEL_ENGINE = (
    "(has(self.serving.engine) ? self.serving.engine : "
    "(self.model.source.startsWith('builtin://') ? 'mmo' : 'vllm'))"
)


RULES: list[CrossFieldRule] = [
    CrossFieldRule(
        at=("autoscaling",),
        field="maxReplicas",
        cel="self.maxReplicas >= self.minReplicas",
        message="maxReplicas must be greater than or equal to minReplicas",
        holds=lambda s: s.autoscaling.max_replicas >= s.autoscaling.min_replicas,
    ),
    CrossFieldRule(
        at=("isolation",),
        field="hybrid",
        cel="self.mode == 'hybrid' ? has(self.hybrid) : !has(self.hybrid)",
        message="the hybrid block is required when mode is hybrid and not allowed otherwise",
        holds=lambda s: (_mode(s) == "hybrid") == (s.isolation.hybrid is not None),
    ),
    CrossFieldRule(
        at=("isolation",),
        field="federated",
        cel="self.mode == 'federated' ? has(self.federated) : !has(self.federated)",
        message="the federated block is required when mode is federated and not allowed otherwise",
        holds=lambda s: (_mode(s) == "federated") == (s.isolation.federated is not None),
    ),
    CrossFieldRule(
        at=("isolation", "hybrid"),
        field="endpoint",
        cel="self.endpoint.startsWith('https://')",
        message="the hybrid endpoint must be an https:// URL",
        holds=lambda s: (
            s.isolation.hybrid is None or s.isolation.hybrid.endpoint.startswith("https://")
        ),
    ),
    CrossFieldRule(
        at=("isolation", "hybrid"),
        field="offloadDataClasses",
        cel="!('sensitive' in self.offloadDataClasses)",
        message="sensitive data never leaves the cluster; allowed classes are public and internal",
        holds=lambda s: (
            s.isolation.hybrid is None or "sensitive" not in s.isolation.hybrid.offload_data_classes
        ),
    ),
    CrossFieldRule(
        at=(),
        field="model.source",
        cel="!(self.isolation.mode in ['private', 'federated']) || "
        "!(self.model.source.startsWith('hf://') || self.model.source.startsWith('https://'))",
        message="hf:// and https:// sources reach outside the cluster and are refused in "
        "private and federated modes; use builtin://, pvc:// or an in-cluster s3://",
        holds=lambda s: (
            _mode(s) not in ("private", "federated")
            or not s.model.source.startswith(("hf://", "https://"))
        ),
    ),
    CrossFieldRule(
        at=("model",),
        field="architecture",
        cel="self.source.startsWith('builtin://') || has(self.architecture)",
        message="architecture is required unless the source is builtin://",
        holds=lambda s: s.model.source.startswith("builtin://") or _has_arch(s),
    ),
    CrossFieldRule(
        at=("model",),
        field="s3",
        cel="self.source.startsWith('s3://') == has(self.s3)",
        message="the s3 block (endpoint, credentialsSecret) is required for s3:// sources "
        "and not allowed for others",
        holds=lambda s: s.model.source.startswith("s3://") == (s.model.s3 is not None),
    ),
    CrossFieldRule(
        at=("model", "architecture"),
        field="expertsPerToken",
        cel="self.expertsPerToken <= self.numExperts",
        message="expertsPerToken must be at most numExperts",
        holds=lambda s: (
            s.model.architecture is None
            or s.model.architecture.experts_per_token <= s.model.architecture.num_experts
        ),
    ),
    CrossFieldRule(
        at=("model", "architecture"),
        field="activeParams",
        cel="self.activeParams <= self.totalParams",
        message="activeParams must be at most totalParams",
        holds=lambda s: (
            s.model.architecture is None
            or s.model.architecture.active_params <= s.model.architecture.total_params
        ),
    ),
    CrossFieldRule(
        at=("model", "architecture"),
        field="numMoeLayers",
        cel="!has(self.numMoeLayers) || self.numMoeLayers <= self.numLayers",
        message="numMoeLayers must be at most numLayers",
        holds=lambda s: (
            s.model.architecture is None
            or s.model.architecture.moe_layers <= s.model.architecture.num_layers
        ),
    ),
    CrossFieldRule(
        at=(),
        field="experts.redundantExperts",
        cel="!has(self.model.architecture) || self.experts.placement != 'balanced' || "
        "(self.model.architecture.numExperts + self.experts.redundantExperts) % "
        "(self.resources.gpusPerNode * self.resources.nodesPerReplica) == 0",
        message="with balanced placement, numExperts + redundantExperts must be divisible "
        "by the GPU count (gpusPerNode * nodesPerReplica)",
        holds=lambda s: (
            s.model.architecture is None
            or s.experts.placement != "balanced"
            or (s.model.architecture.num_experts + s.experts.redundant_experts) % s.total_gpus == 0
        ),
    ),
    CrossFieldRule(
        at=(),
        field="serving.engine",
        cel="!has(self.serving.engine) || "
        "(self.serving.engine == 'mmo') == self.model.source.startsWith('builtin://')",
        message="engine mmo serves only builtin:// sources and engine vllm only checkpoints "
        "(pvc://, s3://, hf://, https://, file://); set engine to match model.source or omit it "
        "(mmo for builtin://, vllm otherwise)",
        holds=lambda s: (
            s.serving.engine is None or ((s.serving.engine == "mmo") == is_builtin(s.model.source))
        ),
    ),
    CrossFieldRule(
        at=(),
        field="serving.vllm",
        cel=f"!has(self.serving.vllm) || {_CEL_ENGINE} == 'vllm'",
        message="the vllm block applies only to engine vllm (the default for sources other "
        "than builtin://); remove it or use a checkpoint source",
        holds=lambda s: s.serving.vllm is None or engine_of(s) == "vllm",
    ),
    CrossFieldRule(
        at=(),
        field="serving.vllm.tensorParallelSize",
        cel="!has(self.serving.vllm) || "
        "(self.resources.gpusPerNode * self.resources.nodesPerReplica) % "
        "self.serving.vllm.tensorParallelSize == 0",
        message="tensorParallelSize must divide the replica's GPU count "
        "(gpusPerNode * nodesPerReplica): the data-parallel size is their quotient",
        holds=lambda s: (
            s.serving.vllm is None or s.total_gpus % s.serving.vllm.tensor_parallel_size == 0
        ),
    ),
]
