"""Everything `mmo validate` and the admission webhook check, in one place.

Order: document shape -> schema (pydantic, same constraints as the CRD) -> cross-field
rules (mirrored in CEL) -> builtin model lookup -> capacity -> isolation admission ->
engine. Every problem names the field path, what is wrong and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmo_operator.api.builtin import BUILTIN_QUANTIZATIONS
from mmo_operator.api.parse import parse_model, read_file, resolve_architecture
from mmo_operator.api.problems import InvalidResource, Problem
from mmo_operator.api.rules import RULES
from mmo_operator.api.v1alpha1 import Architecture, MultimodalModel, engine_of, is_builtin
from mmo_operator.planning.capacity import (
    MMO_QUANTIZATIONS,
    VLLM_QUANTIZATIONS,
    CapacityReport,
    kv_cache_bytes,
    plan_capacity,
)
from mmo_operator.planning.placement import nearest_redundant
from mmo_operator.policy.addresses import ClusterNetworks
from mmo_operator.policy.admission import check_isolation
from mmo_operator.policy.engine import check_engine


@dataclass
class Validated:
    """A resource that passed validation, with what was learnt on the way."""

    model: MultimodalModel
    architecture: Architecture
    capacity: CapacityReport
    warnings: list[str] = field(default_factory=list)


_DIVISIBILITY_PATH = "spec.experts.redundantExperts"


def cross_field_problems(model: MultimodalModel) -> list[Problem]:
    """The rules CEL also checks; the Python side adds the figures CEL messages lack."""
    spec = model.spec
    problems = []
    for rule in RULES:
        if rule.holds(spec):
            continue
        message = rule.message
        if rule.path == _DIVISIBILITY_PATH and spec.model.architecture is not None:
            message += _divisibility_figures(model, spec.model.architecture.num_experts)
        problems.append(Problem(rule.path, message))
    return problems


def _divisibility_figures(model: MultimodalModel, num_experts: int) -> str:
    """``: 256 + 3 = 259 is not a multiple of 8 GPUs (8 x 1); use redundantExperts 0 or 8``."""
    spec = model.spec
    redundant, gpus = spec.experts.redundant_experts, spec.total_gpus
    fixes = " or ".join(map(str, nearest_redundant(num_experts, redundant, gpus)))
    return (
        f": {num_experts} + {redundant} = {num_experts + redundant} is not a multiple of "
        f"{gpus} GPUs ({spec.resources.gpus_per_node} x {spec.resources.nodes_per_replica}); "
        f"use redundantExperts {fixes}"
    )


def builtin_rule_problems(model: MultimodalModel, arch: Architecture) -> list[Problem]:
    """What a built-in model cannot do, and the rules that CEL checks only when the
    architecture is written out in the resource."""
    spec = model.spec
    problems = []
    if is_builtin(spec.model.source) and spec.model.quantization not in BUILTIN_QUANTIZATIONS:
        problems.append(
            Problem(
                "spec.model.quantization",
                f"{spec.model.source} can be served with quantization "
                f"{' or '.join(BUILTIN_QUANTIZATIONS)}, got {spec.model.quantization}",
            )
        )
    if spec.model.architecture is not None or spec.experts.placement != "balanced":
        return problems
    slots = arch.num_experts + spec.experts.redundant_experts
    if slots % spec.total_gpus:
        problems.append(
            Problem(
                _DIVISIBILITY_PATH,
                f"with balanced placement, numExperts ({arch.num_experts} for "
                f"{spec.model.source}) + redundantExperts must be divisible by the GPU count"
                + _divisibility_figures(model, arch.num_experts),
            )
        )
    return problems


def capacity_of(
    model: MultimodalModel, arch: Architecture, *, checkpoint_bytes: int | None = None
) -> CapacityReport:
    """``checkpoint_bytes``: the weights' real size (a safetensors index's total_size)."""
    spec = model.spec
    vllm = spec.serving.vllm
    kv = 0
    if vllm is not None:  # vLLM reserves the KV cache for maxModelLen up front
        kv = kv_cache_bytes(
            arch,
            dtype=spec.model.dtype,
            max_model_len=vllm.max_model_len,
            max_seqs=spec.batching.max_batch_size,
            tensor_parallel_size=vllm.tensor_parallel_size,
        )
    return plan_capacity(
        arch,
        dtype=spec.model.dtype,
        quantization=spec.model.quantization,
        gpu_type=spec.resources.gpu_type,
        gpus_per_node=spec.resources.gpus_per_node,
        nodes=spec.resources.nodes_per_replica,
        redundant_experts=spec.experts.redundant_experts,
        headroom_fraction=spec.resources.headroom_fraction,
        placement=spec.experts.placement,
        kv_bytes=kv,
        checkpoint_bytes=checkpoint_bytes,
        quantizations=VLLM_QUANTIZATIONS if engine_of(spec) == "vllm" else MMO_QUANTIZATIONS,
    )


def capacity_problems(report: CapacityReport) -> list[Problem]:
    if report.fits:
        return []
    options = f"; would fit with: {'; '.join(report.options)}" if report.options else ""
    return [Problem("spec.resources", report.message + options)]


def isolation_problems(
    model: MultimodalModel, *, local: bool = False, cluster: ClusterNetworks | None = None
) -> list[Problem]:
    """``local``: a local trial (``mmo up``), where a loopback peer is allowed.
    ``cluster``: the cluster's pod and Service CIDRs and aggregator namespaces (the
    operator's flags; default: the common distributions')."""
    return list(check_isolation(model, local=local, cluster=cluster))


def validate(
    doc: dict[str, Any], *, local: bool = False, cluster: ClusterNetworks | None = None
) -> Validated:
    """Run every check; raise InvalidResource with all problems found. ``local``: for
    ``mmo up`` (a loopback hybrid endpoint or aggregator is allowed there)."""
    model = parse_model(doc)
    problems = cross_field_problems(model)
    try:
        arch = resolve_architecture(model)
    except InvalidResource as e:
        seen = {p.path for p in problems}
        raise InvalidResource(problems + [p for p in e.problems if p.path not in seen]) from e
    problems += builtin_rule_problems(model, arch)
    capacity = capacity_of(model, arch)
    problems += capacity_problems(capacity)
    problems += isolation_problems(model, local=local, cluster=cluster)
    problems += check_engine(model)
    if problems:
        raise InvalidResource(problems)
    return Validated(model=model, architecture=arch, capacity=capacity, warnings=capacity.warnings)


def validate_file(
    path: str | Path, *, local: bool = False, cluster: ClusterNetworks | None = None
) -> Validated:
    try:
        return validate(read_file(path), local=local, cluster=cluster)
    except InvalidResource as e:
        e.source = str(path)
        raise
