"""Requests, results and expert-load reports of the serving engine.

Torch-free and ray-free: the Serve app, the gateway and the operator-facing endpoints
import these without pulling the model in. Images are numpy ``uint8`` arrays of shape
``H x W x 3``; numpy is imported only when an image is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from mmo_serving.config import PlacementPlan

MAX_NEW_TOKENS_LIMIT = 512


def check_image(image: object, what: str) -> None:
    """Raise ValueError unless ``image`` is a numpy uint8 array of shape HxWx3."""
    import numpy as np

    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what}: expected a numpy uint8 HxWx3 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what}: expected shape HxWx3 (RGB), got {tuple(image.shape)}")


@dataclass
class GenerationRequest:
    """One prompt (text, optional image) and how many tokens to generate at most."""

    text: str
    image: np.ndarray | None = None
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValueError(
                f"GenerationRequest.text: expected str, got {type(self.text).__name__}"
            )
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT
        ):
            raise ValueError(
                f"GenerationRequest.max_new_tokens: expected an int in "
                f"[1, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens!r}"
            )
        if self.image is not None:
            check_image(self.image, "GenerationRequest.image")


@dataclass
class GenerationResult:
    """Generated text, the number of generated tokens, and the number of tokens the
    prompt took (text tokens with their markers, plus the image's tokens)."""

    text: str
    tokens: int
    prompt_tokens: int = 0


@dataclass
class EmbeddingRequest:
    """Text or image (exactly one) to embed."""

    text: str | None = None
    image: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise ValueError("EmbeddingRequest: give exactly one of text or image")
        if self.text is not None and not isinstance(self.text, str):
            raise ValueError(f"EmbeddingRequest.text: expected str, got {type(self.text).__name__}")
        if self.image is not None:
            check_image(self.image, "EmbeddingRequest.image")


def _balancedness(loads: list[int]) -> float:
    total = sum(loads)
    if total == 0 or not loads:
        return 1.0
    return max(loads) / (total / len(loads))


@dataclass(frozen=True)
class ExpertLoad:
    """Tokens processed per (MoE layer, logical expert, rank).

    A "token" here is one (token, expert) pair routed by the top-k router, counted on the
    rank that computed it, so a forward pass over T tokens adds T*top_k per layer.
    ``tokens`` counts since the engine started (what Prometheus counters export);
    ``window`` counts since the current plan was applied (``plan_version`` counts the
    plans applied, 0 being the initial one), so the balancedness of the plan in force is
    not blurred by traffic served under an older plan.
    """

    num_layers: int
    num_experts: int
    num_ranks: int
    tokens: list[list[list[int]]]
    window: list[list[list[int]]]
    plan_version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def rank_loads(self, layer: int, *, window: bool = True) -> list[int]:
        """Tokens computed by each rank in one layer."""
        src = self.window if window else self.tokens
        return [
            sum(src[layer][e][r] for e in range(self.num_experts)) for r in range(self.num_ranks)
        ]

    def balancedness(self, layer: int, *, window: bool = True) -> float:
        """max/mean of the per-rank loads of one layer (1.0 is perfect, and when idle)."""
        return _balancedness(self.rank_loads(layer, window=window))

    def balancedness_per_layer(self, *, window: bool = True) -> list[float]:
        return [self.balancedness(layer, window=window) for layer in range(self.num_layers)]

    def expert_tokens(self, *, window: bool = False) -> list[list[int]]:
        """[layer][expert] tokens summed over ranks: the planner's load matrix."""
        src = self.window if window else self.tokens
        return [
            [sum(src[layer][e]) for e in range(self.num_experts)]
            for layer in range(self.num_layers)
        ]

    def to_loads_json(self, *, window: bool = False) -> dict[str, list[list[int]]]:
        """The ``{"layers": [[tokens per expert], ...]}`` document ``mmo plan --loads`` reads."""
        return {"layers": self.expert_tokens(window=window)}

    def total(self, *, window: bool = False) -> int:
        return sum(sum(row) for row in self.expert_tokens(window=window))

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "numLayers": self.num_layers,
            "numExperts": self.num_experts,
            "numRanks": self.num_ranks,
            "planVersion": self.plan_version,
            "tokens": self.tokens,
            "window": self.window,
            "balancedness": self.balancedness_per_layer(),
        }


class Engine(Protocol):
    """What the Serve app calls on an engine."""

    async def generate(self, items: list[GenerationRequest]) -> list[GenerationResult]: ...

    async def embed(self, items: list[EmbeddingRequest]) -> list[list[float]]: ...

    async def expert_load(self) -> ExpertLoad: ...

    async def update_plan(self, plan: PlacementPlan) -> None: ...

    async def close(self) -> None: ...
