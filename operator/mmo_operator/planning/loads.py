"""Expert load matrices: validation, the loads file of ``mmo plan``, the uniform default.

A load matrix is ``[layers][experts]`` of non-negative finite numbers (tokens routed to
each logical expert over some window). The loads file is either that matrix as
``{"layers": ...}`` or what a model's ``GET /v1/expert-load`` returns (its ``tokens``,
``[layer][expert][rank]`` counts since the engine started, summed over ranks). Pure:
numpy only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

LOADS_FORMAT = (
    '{"layers": [[tokens per expert, ...], ...]} or the JSON of GET /v1/expert-load '
    '({"tokens": [[[tokens per rank, ...] per expert] per layer], ...})'
)


def uniform_loads(num_layers: int, num_experts: int) -> list[list[float]]:
    """The load assumed when the caller has none: every expert equally busy."""
    if num_layers < 1 or num_experts < 1:
        raise ValueError(
            f"uniform loads need num_layers >= 1 and num_experts >= 1, "
            f"got {num_layers} and {num_experts}"
        )
    return [[1.0] * num_experts for _ in range(num_layers)]


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def _check_value(value: object, where: str) -> float:
    if not _is_number(value):
        raise ValueError(f"{where} is {value!r}: loads must be numbers (tokens per expert)")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where} is {value!r}: loads must be finite and >= 0")
    return number


def load_matrix(loads: Any) -> np.ndarray:
    """Validate ``loads`` ([layers][experts], any shape) and return a float64 array.

    Raises ValueError naming the first bad layer/expert.
    """
    if isinstance(loads, np.ndarray):
        if loads.ndim != 2 or loads.shape[0] < 1 or loads.shape[1] < 1:
            raise ValueError(
                f"loads must be a [layers][experts] matrix with at least one layer and one "
                f"expert, got an array of shape {loads.shape}"
            )
        matrix = loads.astype(np.float64)
        bad = np.argwhere(~np.isfinite(matrix) | (matrix < 0))
        if len(bad):
            layer, expert = (int(i) for i in bad[0])
            raise ValueError(
                f"loads: layer {layer} expert {expert} is {loads[layer, expert].item()!r}: "
                "loads must be finite and >= 0"
            )
        return matrix
    if not isinstance(loads, Sequence) or isinstance(loads, (str, bytes)) or not loads:
        raise ValueError(
            f"loads must be a non-empty [layers][experts] list, got {type(loads).__name__}"
        )
    width: int | None = None
    rows: list[list[float]] = []
    for i, row in enumerate(loads):
        if isinstance(row, np.ndarray) and row.ndim == 1:
            row = row.tolist()
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)):
            raise ValueError(
                f"loads: layer {i} is {type(row).__name__}, expected a list of numbers"
            )
        if width is None:
            if not row:
                raise ValueError("loads: layer 0 has no experts")
            width = len(row)
        elif len(row) != width:
            raise ValueError(
                f"loads: layer {i} has {len(row)} experts but layer 0 has {width}; "
                "every layer needs one load per expert"
            )
        rows.append([_check_value(v, f"loads: layer {i} expert {j}") for j, v in enumerate(row)])
    return np.asarray(rows, dtype=np.float64)


def read_loads(
    source: str | Path | Mapping[str, Any] | Sequence[Any] | None,
    *,
    num_layers: int,
    num_experts: int,
) -> list[list[float]]:
    """Read the loads of ``mmo plan --loads``: a path to JSON, a parsed object, or None.

    ``None`` gives uniform loads; a list is taken as the ``"layers"`` value itself.
    The JSON is ``{"layers": [[tokens per expert], ...]}``
    with one row per MoE layer of the model and one number per expert; other keys are
    ignored. Every error names the file, the layer and the expert at fault.
    """
    if source is None:
        return uniform_loads(num_layers, num_experts)
    if isinstance(source, Mapping):
        name, data = "loads", source
    elif isinstance(source, (Sequence, np.ndarray)) and not isinstance(source, (str, bytes)):
        rows = [r.tolist() if isinstance(r, np.ndarray) else r for r in source]
        name, data = "loads", {"layers": rows}
    elif not isinstance(source, (str, Path)):
        raise ValueError(
            f"loads must be a file path, an object or a list of layers, got {type(source).__name__}"
        )
    else:
        path = Path(source)
        name = f"loads file {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{name}: no such file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{name}: cannot read it ({err})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{name} is not JSON: {err.msg} at line {err.lineno} column {err.colno}; "
                f"expected {LOADS_FORMAT}"
            ) from None
    if isinstance(data, Mapping) and "layers" not in data and "tokens" in data:
        data = {"layers": _expert_load_layers(data["tokens"], name)}
    if not isinstance(data, Mapping) or "layers" not in data:
        got = "an object without them" if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f'{name}: missing "layers" or "tokens" (got {got}); expected {LOADS_FORMAT}'
        )
    layers = data["layers"]
    if not isinstance(layers, (list, tuple)):
        raise ValueError(
            f'{name}: "layers" is {type(layers).__name__}, expected a list of lists '
            f"({LOADS_FORMAT})"
        )
    if len(layers) != num_layers:
        raise ValueError(f"{name}: {len(layers)} layers, but the model has {num_layers} MoE layers")
    result: list[list[float]] = []
    for i, row in enumerate(layers):
        if not isinstance(row, (list, tuple)):
            raise ValueError(
                f"{name}: layer {i} is {type(row).__name__}, expected a list of "
                f"{num_experts} numbers"
            )
        if len(row) != num_experts:
            raise ValueError(
                f"{name}: layer {i} has {len(row)} experts, but the model has {num_experts}"
            )
        result.append([_check_value(v, f"{name}: layer {i} expert {j}") for j, v in enumerate(row)])
    return result


def _expert_load_layers(tokens: Any, name: str) -> list[Any]:
    """``tokens[layer][expert][rank]`` of ``GET /v1/expert-load`` summed over ranks; the
    layer and expert counts are checked against the model afterwards, like ``layers``."""
    expected = "a [layer][expert][rank] list of token counts, as GET /v1/expert-load returns"
    if not isinstance(tokens, (list, tuple)):
        raise ValueError(f'{name}: "tokens" is {type(tokens).__name__}, expected {expected}')
    layers: list[Any] = []
    for li, layer in enumerate(tokens):
        if not isinstance(layer, (list, tuple)):
            raise ValueError(f"{name}: tokens[{li}] is {type(layer).__name__}, expected {expected}")
        row: list[float] = []
        for ei, per_rank in enumerate(layer):
            if not isinstance(per_rank, (list, tuple)) or not per_rank:
                raise ValueError(
                    f"{name}: tokens[{li}][{ei}] is {per_rank!r}, expected the token counts "
                    "of each rank (a non-empty list of numbers)"
                )
            row.append(
                sum(
                    _check_value(v, f"{name}: tokens[{li}][{ei}][{ri}]")
                    for ri, v in enumerate(per_rank)
                )
            )
        layers.append(row)
    return layers
