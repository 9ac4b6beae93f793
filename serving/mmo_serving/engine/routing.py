"""From a placement plan to routing tables, and from one plan to the next (pure Python).

``PlacementPlan`` (``mmo_serving.config``) says, per MoE layer, which logical expert each
physical slot holds; slot ``s`` lives on GPU (rank) ``s // slots_per_gpu``. The engine
needs, per layer: the experts each rank holds (its local weight stack, in slot order,
without repeats) and, per expert, its copies as (rank, index in that rank's stack).

A token's copy is chosen by ``(token index + sender rank) % copies``: deterministic, and
spread evenly over the copies both within a batch and across senders (at decode time
each rank sends one token per sequence, so the sender rank does the spreading).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmo_serving.config import EMPTY_SLOT, LayerPlacement, PlacementPlan


@dataclass(frozen=True)
class LayerRoute:
    """Routing table of one MoE layer."""

    local_experts: list[list[int]]
    """Per rank: the logical experts it holds, in the order of its local weight stack."""
    copies: list[list[tuple[int, int]]]
    """Per logical expert: (rank, local index) of each copy, in slot order."""

    def holders(self, expert: int) -> list[int]:
        return sorted({rank for rank, _ in self.copies[expert]})


def _balancedness(loads: list[float]) -> float:
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def contiguous_plan(num_layers: int, num_experts: int, num_gpus: int) -> PlacementPlan:
    """Experts ``0..E-1`` in order over the GPUs, one copy each (the default plan)."""
    if num_layers < 1 or num_experts < 1 or num_gpus < 1:
        raise ValueError(
            f"contiguous_plan: num_layers={num_layers}, num_experts={num_experts}, "
            f"num_gpus={num_gpus}: all must be >= 1"
        )
    per_gpu = -(-num_experts // num_gpus)
    slots = list(range(num_experts)) + [EMPTY_SLOT] * (per_gpu * num_gpus - num_experts)
    loads = [
        float(sum(1 for e in slots[g * per_gpu : (g + 1) * per_gpu] if e != EMPTY_SLOT))
        for g in range(num_gpus)
    ]
    bal = _balancedness(loads)
    layers = [
        LayerPlacement(
            layer=layer,
            slots=list(slots),
            replicas=[1] * num_experts,
            gpu_load=list(loads),
            balancedness=bal,
        )
        for layer in range(num_layers)
    ]
    return PlacementPlan(
        strategy="contiguous",
        num_gpus=num_gpus,
        slots_per_gpu=per_gpu,
        num_experts=num_experts,
        layers=layers,
        balancedness=bal,
    )


def validate_plan(plan: PlacementPlan, *, num_layers: int, num_experts: int, world: int) -> None:
    """Raise ValueError unless ``plan`` fits a model and an engine of ``world`` ranks."""
    if plan.num_gpus != world:
        raise ValueError(f"placement.numGpus={plan.num_gpus} but the engine has {world} ranks")
    if plan.num_experts != num_experts:
        raise ValueError(
            f"placement.numExperts={plan.num_experts} but the model has {num_experts} "
            "experts per MoE layer"
        )
    seen = sorted(lp.layer for lp in plan.layers)
    if seen != list(range(num_layers)):
        raise ValueError(
            f"placement.layers covers MoE layers {seen}; the model has {num_layers} MoE "
            f"layers, expected each of 0..{num_layers - 1} exactly once"
        )
    for i, lp in enumerate(plan.layers):
        counts = [0] * num_experts
        for e in lp.slots:
            if e != EMPTY_SLOT:
                counts[e] += 1
        missing = [e for e, c in enumerate(counts) if c == 0]
        if missing:
            raise ValueError(
                f"placement.layers[{i}].slots (layer {lp.layer}): experts {missing} have no "
                "slot; every expert needs at least one copy"
            )
        if list(lp.replicas) != counts:
            bad = next(e for e in range(num_experts) if lp.replicas[e] != counts[e])
            raise ValueError(
                f"placement.layers[{i}].replicas[{bad}]={lp.replicas[bad]} but expert {bad} "
                f"holds {counts[bad]} slots"
            )


def layer_routes(plan: PlacementPlan) -> list[LayerRoute]:
    """Routing tables indexed by MoE layer (the plan must have been validated)."""
    routes: list[LayerRoute | None] = [None] * len(plan.layers)
    for lp in plan.layers:
        local: list[list[int]] = [[] for _ in range(plan.num_gpus)]
        copies: list[list[tuple[int, int]]] = [[] for _ in range(plan.num_experts)]
        for slot, expert in enumerate(lp.slots):
            if expert == EMPTY_SLOT:
                continue
            rank = plan.gpu_of_slot(slot)
            if expert not in local[rank]:
                local[rank].append(expert)
            copies[expert].append((rank, local[rank].index(expert)))
        routes[lp.layer] = LayerRoute(local_experts=local, copies=copies)
    return [r for r in routes if r is not None]


def transfer_sources(old: LayerRoute, new: LayerRoute) -> dict[tuple[int, int], int]:
    """For every (rank, expert) the new plan adds to a rank: the rank that sends it.

    The sender is one of the expert's current holders, picked as ``holders[rank % n]`` so
    that copying a hot expert to several ranks spreads over its holders. Every rank
    computes the same table, so no negotiation is needed.
    """
    sources: dict[tuple[int, int], int] = {}
    for rank, experts in enumerate(new.local_experts):
        for expert in experts:
            if expert in old.local_experts[rank]:
                continue
            holders = old.holders(expert)
            sources[(rank, expert)] = holders[rank % len(holders)]
    return sources


def moved_experts(old: LayerRoute, new: LayerRoute) -> int:
    """Expert copies a plan change has to send between ranks in one layer."""
    return len(transfer_sources(old, new))
