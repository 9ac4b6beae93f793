"""What the engine needs from an MoE model, found by duck typing.

Every MoE feed-forward module has ``moe_layer_index``, ``route()``, a ``dispatcher``
attribute (None by default) and stacked expert tensors ``w_in [E, H, I]``,
``w_out [E, I, H]`` (and optionally ``w_gate [E, H, I]``; a module can list other
per-expert tensors, such as quantization scales, in ``expert_tensor_names``). When
``dispatcher`` is set, the module's forward calls ``dispatcher(module, x2d, topk_ids,
topk_w)`` instead of computing its experts itself.

On a rank, the stacks are replaced by *local* stacks holding only the experts the plan
gives that rank; row ``j`` of a local stack is the rank's ``j``-th local expert.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DEFAULT_EXPERT_TENSORS = ("w_in", "w_gate", "w_out")


def is_moe_layer(module: nn.Module) -> bool:
    return hasattr(module, "moe_layer_index") and hasattr(module, "dispatcher")


def layer_index(module: nn.Module) -> int:
    """``moe_layer_index`` of an MoE layer (0-based among MoE layers)."""
    return int(getattr(module, "moe_layer_index"))  # noqa: B009 (untyped nn.Module attribute)


def find_moe_layers(model: nn.Module) -> list[nn.Module]:
    """The model's MoE layers ordered by ``moe_layer_index`` (which must be 0..L-1)."""
    layers = sorted((m for m in model.modules() if is_moe_layer(m)), key=layer_index)
    indices = [layer_index(m) for m in layers]
    if indices != list(range(len(layers))):
        raise ValueError(
            f"MoE layers have moe_layer_index {indices}, expected 0..{len(layers) - 1}"
        )
    if not layers:
        raise ValueError("the model has no MoE layer (no module with moe_layer_index)")
    return layers


def expert_tensor_names(module: nn.Module) -> list[str]:
    names = getattr(module, "expert_tensor_names", None)
    if names is None:
        names = [n for n in DEFAULT_EXPERT_TENSORS if getattr(module, n, None) is not None]
    return list(names)


def num_experts(module: nn.Module) -> int:
    return int(getattr(module, expert_tensor_names(module)[0]).shape[0])


def set_expert_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace one stacked expert tensor (parameter or buffer) in place of the old one."""
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        setattr(module, name, value)


def keep_experts(module: nn.Module, experts: list[int]) -> None:
    """Keep only ``experts`` (logical ids, in local order); the rest is freed."""
    index = torch.tensor(experts, dtype=torch.long)
    for name in expert_tensor_names(module):
        full = getattr(module, name)
        set_expert_tensor(module, name, full.index_select(0, index.to(full.device)).contiguous())


def _module_global(module: nn.Module, name: str) -> Any:
    """A global of the Python module defining ``type(module)`` (also when pickled by value)."""
    py_module = sys.modules.get(type(module).__module__)
    if py_module is not None and hasattr(py_module, name):
        return getattr(py_module, name)
    return type(module).forward.__globals__.get(name)


def expert_function(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(x [N, H], ids [N]) -> [N, H]``: row ``i`` through local expert ``ids[i]``.

    Uses the module's ``grouped_forward(x2d, topk_ids, topk_w)`` method when it has one,
    else the ``grouped_expert_forward`` function of the module's own Python module, fed
    with the module's (local) expert tensors.
    """
    method = getattr(module, "grouped_forward", None)
    if method is not None:

        def via_method(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            ones = torch.ones(ids.shape[0], 1, dtype=x.dtype, device=x.device)
            return method(x, ids.unsqueeze(1), ones)

        return via_method
    fn = _module_global(module, "grouped_expert_forward")
    if fn is None:
        raise TypeError(
            f"{type(module).__name__}: no grouped_forward method and no module-level "
            "grouped_expert_forward to compute experts with"
        )

    def via_function(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(ids.shape[0], 1, dtype=x.dtype, device=x.device)
        kwargs: dict[str, Any] = {}
        if getattr(module, "w_gate", None) is not None:
            kwargs["w_gate"] = module.w_gate
        return fn(x, ids.unsqueeze(1), ones, module.w_in, module.w_out, **kwargs)

    return via_function
