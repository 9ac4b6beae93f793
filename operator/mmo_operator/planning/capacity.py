"""Capacity planner: does a model fit N x GPU memory under expert parallelism?

Under expert parallelism every GPU holds a full copy of the dense weights (attention,
embeddings, shared experts, dense layers) and a share of the routed experts. A *slot*
holds one expert copy in every MoE layer; a GPU has the same number of slots in each
layer, so ``slot_bytes = moe_layers * bytes_of_one_expert``.

GPU memory is taken as the nominal size in decimal gigabytes (an "A100-80GB" counts as
80e9 bytes; the real 80 GiB leaves about 7% more), and every figure is reported in
decimal units.

Quantization applies to the weights of linear layers; embeddings and the output head
(``vocabSize * hiddenSize`` each, when both are given) stay in ``dtype``.

When a model does not fit, every suggestion is a spec that validation accepts: within
the schema's bounds and, with balanced placement, with the redundant copies that make
numExperts + redundantExperts a multiple of the GPU count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from mmo_operator.api.v1alpha1 import Architecture, Experts, Resources
from mmo_operator.planning.placement import max_redundant, nearest_redundant

GPU_MEMORY_GB: dict[str, int] = {
    "A100-40GB": 40,
    "A100-80GB": 80,
    "H100-80GB": 80,
    "H200-141GB": 141,
    "L40S-48GB": 48,
}
DTYPE_BYTES: dict[str, float] = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
# int8 formats and fp8: one byte per weight with a per-row or per-block scale
# (negligible); int4 formats (AWQ, GPTQ, compressed-tensors W4A16): half a byte plus a
# 16-bit scale per group of 128 weights. experts-int8 quantizes the routed experts only.
_INT4 = 0.5 + 2 / 128
QUANT_BYTES: dict[str, float | None] = {
    "none": None,
    "int8": 1.0,
    "int4": _INT4,
    "awq-int4": _INT4,
    "gptq-int4": _INT4,
    "w4a16": _INT4,
    "w8a8-int8": 1.0,
    "fp8": 1.0,
    "experts-int8": 1.0,
}
EXPERTS_ONLY = frozenset({"experts-int8"})
# What `_options` may suggest, lightest last: names the engine can run.
MMO_QUANTIZATIONS = ("none", "int8", "int4")
VLLM_QUANTIZATIONS = ("none", "w8a8-int8", "awq-int4")
CONSISTENCY_TOLERANCE = 0.05
MAX_NODES_SEARCHED = 4096


def _schema_max(model: type[BaseModel], name: str) -> int:
    """The upper bound (``le``) of an API field, so that suggestions stay within it."""
    for bound in model.model_fields[name].metadata:
        if getattr(bound, "le", None) is not None:
            return int(bound.le)
    raise LookupError(f"{model.__name__}.{name} has no upper bound")


MAX_NODES = _schema_max(Resources, "nodes_per_replica")
MAX_REDUNDANT = _schema_max(Experts, "redundant_experts")


@dataclass(frozen=True)
class ParamSplit:
    """How the parameters of a model divide into dense and routed-expert parts."""

    dense: int
    embeddings: int
    per_expert: int  # parameters of one routed expert in one MoE layer
    moe_layers: int
    num_experts: int
    warnings: tuple[str, ...] = ()

    @property
    def routed(self) -> int:
        return self.per_expert * self.moe_layers * self.num_experts


def split_params(arch: Architecture) -> ParamSplit:
    """Dense vs routed parameters, from the detailed sizes when given, else the totals."""
    moe_layers = arch.moe_layers
    e, k = arch.num_experts, arch.experts_per_token
    warnings: list[str] = []
    if arch.hidden_size and arch.expert_intermediate_size:
        # gated feed-forward: gate, up and down projections
        per_expert = 3 * arch.hidden_size * arch.expert_intermediate_size
    elif e > k:
        # total - active = routed * (1 - k/e)
        routed_est = (arch.total_params - arch.active_params) / (1 - k / e)
        per_expert = int(routed_est / (moe_layers * e))
    else:
        per_expert = int(arch.total_params / (moe_layers * e))
    routed = per_expert * moe_layers * e
    if routed > arch.total_params:
        warnings.append(
            f"the routed experts alone ({_count(routed)} parameters from the architecture) "
            f"exceed totalParams ({_count(arch.total_params)})"
        )
        per_expert = arch.total_params // (moe_layers * e)
        routed = per_expert * moe_layers * e
    dense = arch.total_params - routed
    implied_active = dense + routed * k / e
    if abs(implied_active - arch.active_params) > CONSISTENCY_TOLERANCE * arch.active_params:
        warnings.append(
            f"the architecture implies {_count(implied_active)} active parameters per token "
            f"but activeParams is {_count(arch.active_params)} "
            f"({100 * (implied_active / arch.active_params - 1):+.0f}%); check the sizes"
        )
    embeddings = 0
    if arch.vocab_size and arch.hidden_size:
        embeddings = min(dense, 2 * arch.vocab_size * arch.hidden_size)
    return ParamSplit(dense, embeddings, per_expert, moe_layers, e, tuple(warnings))


@dataclass(frozen=True)
class Suggestion:
    """A change that makes the model fit: ``changes`` maps field paths below ``spec``
    (as written in the YAML, e.g. ``resources.nodesPerReplica``) to their new values."""

    text: str
    changes: dict[str, object]


@dataclass
class CapacityReport:
    fits: bool
    gpu_type: str
    gpus_per_node: int
    nodes: int
    dtype: str
    quantization: str
    gpu_memory_bytes: int
    usable_bytes_per_gpu: int
    total_weight_bytes: int
    dense_bytes: int
    expert_bytes: int  # one expert in one MoE layer
    slot_bytes: int
    slots_needed_per_gpu: int
    max_slots_per_gpu: int
    max_redundant_experts: int
    bytes_per_gpu: int
    message: str
    kv_cache_bytes: int = 0  # per GPU, included in bytes_per_gpu
    options: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def to_dict(self) -> dict[str, object]:
        """The report with camelCase keys, as the placement plan and the status write
        theirs (``suggestions[].changes`` keep their spec field paths)."""
        out = {to_camel(k): v for k, v in asdict(self).items()}
        out["gpus"] = self.gpus
        return out


def _weight_bytes(split: ParamSplit, dtype: str, quantization: str) -> tuple[int, int]:
    """(dense bytes, bytes of one expert in one layer)."""
    plain = DTYPE_BYTES[dtype]
    q = QUANT_BYTES[quantization]
    linear = plain if q is None else q
    dense_linear = plain if quantization in EXPERTS_ONLY else linear
    dense = (split.dense - split.embeddings) * dense_linear + split.embeddings * plain
    return int(dense), math.ceil(split.per_expert * linear)


def plan_capacity(
    arch: Architecture,
    *,
    dtype: str,
    quantization: str,
    gpu_type: str,
    gpus_per_node: int,
    nodes: int = 1,
    redundant_experts: int = 0,
    headroom_fraction: float = 0.15,
    placement: str = "balanced",
    with_options: bool = True,
    kv_bytes: int = 0,
    quantizations: tuple[str, ...] = MMO_QUANTIZATIONS,
    checkpoint_bytes: int | None = None,
) -> CapacityReport:
    """``kv_bytes``: the KV cache each GPU holds (see :func:`kv_cache_bytes`); like the
    dense weights it does not shrink with more GPUs (each rank serves its own batch).
    ``checkpoint_bytes``: the real size of the weights; the dense and expert bytes are
    scaled to it (other precisions suggested are other checkpoints: not scaled)."""
    split = split_params(arch)
    gpu_mem = GPU_MEMORY_GB[gpu_type] * 10**9
    usable = int(gpu_mem * (1 - headroom_fraction))
    dense_b, expert_b = _weight_bytes(split, dtype, quantization)
    if checkpoint_bytes:
        scale = checkpoint_bytes / (dense_b + split.moe_layers * split.num_experts * expert_b)
        dense_b, expert_b = int(dense_b * scale), math.ceil(expert_b * scale)
    slot_b = split.moe_layers * expert_b
    gpus = gpus_per_node * nodes
    needed = math.ceil((split.num_experts + redundant_experts) / gpus)
    fixed_b = dense_b + kv_bytes
    per_gpu = fixed_b + needed * slot_b
    max_slots = int(max(0, (usable - fixed_b) // slot_b) if slot_b else 0)
    total = dense_b + split.num_experts * slot_b
    fits = per_gpu <= usable
    report = CapacityReport(
        fits=fits,
        gpu_type=gpu_type,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        dtype=dtype,
        quantization=quantization,
        gpu_memory_bytes=gpu_mem,
        usable_bytes_per_gpu=usable,
        total_weight_bytes=total,
        dense_bytes=dense_b,
        expert_bytes=expert_b,
        slot_bytes=slot_b,
        slots_needed_per_gpu=needed,
        max_slots_per_gpu=max_slots,
        max_redundant_experts=max_redundant(split.num_experts, gpus, max_slots),
        bytes_per_gpu=per_gpu,
        message="",
        kv_cache_bytes=kv_bytes,
        warnings=list(split.warnings),
    )
    node_label = f"{gpus_per_node}×{gpu_type}"
    precision = dtype if quantization == "none" else f"{quantization} ({dtype} activations)"
    kv_words = f" ({fmt_bytes(kv_bytes)} of it KV cache)" if kv_bytes else ""
    if fits:
        report.message = (
            f"fits: {fmt_bytes(per_gpu)} per GPU{kv_words} of {fmt_bytes(usable)} usable "
            f"({fmt_bytes(gpu_mem)} less {headroom_fraction:.0%} headroom) on "
            f"{nodes} node(s) of {node_label} in {precision}; {needed} expert slot(s) per "
            f"GPU used of {max_slots} that fit"
        )
        return report
    if redundant_experts and fixed_b + math.ceil(split.num_experts / gpus) * slot_b <= usable:
        most = report.max_redundant_experts
        distinct = " (copies of one expert sit on distinct GPUs)"
        report.message = (
            f"does not fit: redundantExperts={redundant_experts} needs {needed} expert slots "
            f"per GPU ({fmt_bytes(per_gpu)}) but memory holds {max_slots} "
            f"({fmt_bytes(usable)} usable); at most {most} redundant copies fit on "
            f"{nodes} node(s) of {node_label} in {precision}"
            f"{distinct if most < max_slots * gpus - split.num_experts else ''}"
        )
        report.suggestions = [
            Suggestion(f"redundantExperts {most}", {"experts.redundantExperts": most})
        ]
        return report
    need = nodes_needed(split, fixed_b, slot_b, usable, gpus_per_node, redundant_experts, placement)
    if need is None and fixed_b > usable:
        where = (
            f"the dense weights alone ({fmt_bytes(dense_b)}) exceed a GPU's usable memory"
            if dense_b > usable
            else f"the dense weights ({fmt_bytes(dense_b)}) and the KV cache "
            f"({fmt_bytes(kv_bytes)}) exceed a GPU's usable memory (lower "
            "serving.vllm.maxModelLen or batching.maxBatchSize)"
        )
    elif need is None:
        where = (
            f"one expert slot ({fmt_bytes(slot_b)}: one expert in each of the "
            f"{split.moe_layers} MoE layers) and the dense weights ({fmt_bytes(dense_b)}) "
            "exceed a GPU's usable memory"
        )
    elif need > MAX_NODES:
        where = (
            f"needs {need} nodes of {node_label}, more than nodesPerReplica allows ({MAX_NODES})"
        )
    else:  # nodes_needed only counts node counts with valid copies
        gpus_needed = gpus_per_node * need
        fix = _copies_for(split.num_experts, redundant_experts, gpus_needed, placement)
        text, copies = fix if fix is not None else ("", {})
        why = (
            f" (balanced placement needs numExperts + redundantExperts divisible by the "
            f"{gpus_needed} GPUs)"
            if copies
            else ""
        )
        where = f"needs {need} nodes of {node_label}{text}{why}"
        changes = {"resources.nodesPerReplica": need, **copies}
        report.suggestions.append(Suggestion(f"nodesPerReplica {need}{text}", changes))
    report.message = (
        f"does not fit: {where} in {precision}; {fmt_bytes(total)} of weights against "
        f"{fmt_bytes(gpu_mem * gpus)} of GPU memory on {nodes} node(s), "
        f"{fmt_bytes(per_gpu)} per GPU{kv_words} against {fmt_bytes(usable)} usable"
    )
    if with_options:
        options = _options(
            arch,
            dtype,
            quantization,
            gpu_type,
            gpus_per_node,
            nodes,
            redundant_experts,
            headroom_fraction,
            placement,
            kv_bytes,
            quantizations,
        )
        report.options = [o.text for o in options]
        report.suggestions += options
    return report


def kv_cache_bytes(
    arch: Architecture,
    *,
    dtype: str,
    max_model_len: int | None,
    max_seqs: int,
    tensor_parallel_size: int = 1,
) -> int:
    """KV cache of one GPU: ``max_seqs`` sequences of ``max_model_len`` tokens in
    ``dtype`` (0 when the length or the attention sizes are not given). Grouped-query
    heads are split over tensor-parallel GPUs; an mla latent is held whole by each."""
    per_token = arch.kv_values_per_token()
    if per_token is None or max_model_len is None:
        return 0
    split = 1
    if arch.attention == "gqa" and arch.num_kv_heads:
        split = min(tensor_parallel_size, arch.num_kv_heads)
    return math.ceil(per_token * DTYPE_BYTES[dtype] * max_model_len * max_seqs / split)


def redundant_for(num_experts: int, redundant: int, gpus: int, placement: str) -> int | None:
    """redundantExperts on ``gpus`` GPUs: the given value or, with balanced placement, the
    next one that makes numExperts + redundantExperts a multiple of ``gpus`` (the same
    expert slots per GPU, so the same memory); None when that exceeds the schema."""
    if placement != "balanced":
        return redundant
    copies = nearest_redundant(num_experts, redundant, gpus)[-1]
    return copies if copies <= MAX_REDUNDANT else None


def _copies_for(
    num_experts: int, redundant: int, gpus: int, placement: str
) -> tuple[str, dict[str, object]] | None:
    """Words and change of redundantExperts for ``gpus`` GPUs (empty when none is
    needed), None when no valid value exists."""
    copies = redundant_for(num_experts, redundant, gpus, placement)
    if copies is None:
        return None
    if copies == redundant:
        return "", {}
    return f" with redundantExperts {copies}", {"experts.redundantExperts": copies}


def nodes_needed(
    split: ParamSplit,
    dense_b: int,
    slot_b: int,
    usable: int,
    gpus_per_node: int,
    redundant: int,
    placement: str = "balanced",
) -> int | None:
    """Fewest nodes of ``gpus_per_node`` GPUs on which the model fits, or None.

    With balanced placement a node count counts only when some redundantExperts within
    the schema makes numExperts + redundantExperts a multiple of its GPUs.
    """
    if dense_b + slot_b > usable:
        return None
    for n in range(1, MAX_NODES_SEARCHED + 1):
        gpus = gpus_per_node * n
        copies = redundant_for(split.num_experts, redundant, gpus, placement)
        if copies is None:
            continue
        needed = math.ceil((split.num_experts + copies) / gpus)
        if dense_b + needed * slot_b <= usable:
            return n
    return None


def _options(
    arch: Architecture,
    dtype: str,
    quantization: str,
    gpu_type: str,
    gpus_per_node: int,
    nodes: int,
    redundant: int,
    headroom: float,
    placement: str,
    kv_bytes: int = 0,
    quantizations: tuple[str, ...] = MMO_QUANTIZATIONS,
) -> list[Suggestion]:
    """Nearest settings that would fit: lower precisions (on more nodes when needed),
    then bigger GPUs."""
    candidates: list[tuple[str, str]] = []
    if dtype == "float32" and quantization == "none":
        candidates.append(("bfloat16", "none"))

    def weight_bytes(q: str) -> float:
        return QUANT_BYTES[q] or DTYPE_BYTES[dtype]

    for q in quantizations:
        if weight_bytes(q) < weight_bytes(quantization):
            candidates.append((dtype if dtype != "float32" else "bfloat16", q))
    split = split_params(arch)

    def at(d: str, q: str, g: str) -> CapacityReport:
        return plan_capacity(
            arch,
            dtype=d,
            quantization=q,
            gpu_type=g,
            gpus_per_node=gpus_per_node,
            nodes=nodes,
            redundant_experts=redundant,
            headroom_fraction=headroom,
            placement=placement,
            with_options=False,
            kv_bytes=kv_bytes,
        )

    def copies_on(n: int) -> tuple[str, dict[str, object]] | None:
        return _copies_for(split.num_experts, redundant, gpus_per_node * n, placement)

    here = copies_on(nodes)
    out = []
    for d, q in candidates:
        rep = at(d, q, gpu_type)
        precision: dict[str, object] = {"model.dtype": d} if d != dtype else {}
        if q != quantization:
            precision["model.quantization"] = q
        label = ", ".join(f"{path.split('.')[-1]} {value}" for path, value in precision.items())
        if rep.fits:
            if here is not None:
                text = f"{label}: fits on {nodes} node(s), {fmt_bytes(rep.bytes_per_gpu)} per GPU"
                out.append(Suggestion(text + here[0], {**precision, **here[1]}))
            continue
        n = nodes_needed(
            split,
            rep.dense_bytes + kv_bytes,
            rep.slot_bytes,
            rep.usable_bytes_per_gpu,
            gpus_per_node,
            redundant,
            placement,
        )
        fix = copies_on(n) if n and n <= MAX_NODES else None
        if n and fix is not None:
            out.append(
                Suggestion(
                    f"{label}: {n} nodes of {gpus_per_node}×{gpu_type}{fix[0]}",
                    {**precision, "resources.nodesPerReplica": n, **fix[1]},
                )
            )
    if here is not None:
        for g, mem in GPU_MEMORY_GB.items():
            if mem > GPU_MEMORY_GB[gpu_type] and at(dtype, quantization, g).fits:
                text = f"gpuType {g}: fits on {nodes} node(s){here[0]}"
                out.append(Suggestion(text, {"resources.gpuType": g, **here[1]}))
    return out


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _count(n: float) -> str:
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))
