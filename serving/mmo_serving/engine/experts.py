"""What the engine needs from an MoE model, found by duck typing.

Every MoE feed-forward module has ``moe_layer_index``, ``route()``, a ``dispatcher``
attribute (None by default) and stacked per-expert weights: ``w_in [E, H, I]``,
``w_out [E, I, H]`` and, when present, ``b_in``, ``b_out``, ``w_gate`` (a module can
name its own list in ``expert_tensor_names``). A stack is a tensor, or a module whose
own buffers/parameters are all stacked along dimension 0 (the model's INT8 stacks:
``qweight [E, K, N]`` and ``scale [E, N]``). When ``dispatcher`` is set, the module's
forward calls ``dispatcher(module, x2d, topk_ids, topk_w)`` instead of computing its
experts itself.

On a rank the stacks are replaced by *local* stacks holding only the experts the plan
gives that rank; row ``j`` of a local stack is the rank's ``j``-th local expert.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DEFAULT_EXPERT_TENSORS = ("w_in", "w_gate", "w_out", "b_in", "b_out")
_OPTIONAL_ARGS = ("b_in", "b_out", "w_gate")


def is_moe_layer(module: nn.Module) -> bool:
    return hasattr(module, "moe_layer_index") and hasattr(module, "dispatcher")


def layer_index(module: nn.Module) -> int:
    """``moe_layer_index`` of an MoE layer (0-based among MoE layers)."""
    return int(getattr(module, "moe_layer_index"))  # noqa: B009 (untyped nn.Module attribute)


def find_moe_layers(model: nn.Module) -> list[nn.Module]:
    """The model's MoE layers ordered by ``moe_layer_index`` (which must be 0..L-1)."""
    layers = sorted((m for m in model.modules() if is_moe_layer(m)), key=layer_index)
    indices = [layer_index(m) for m in layers]
    if not layers:
        raise ValueError("the model has no MoE layer (no module with moe_layer_index)")
    if indices != list(range(len(layers))):
        raise ValueError(
            f"MoE layers have moe_layer_index {indices}, expected 0..{len(layers) - 1}"
        )
    return layers


def expert_tensor_names(module: nn.Module) -> list[str]:
    names = getattr(module, "expert_tensor_names", None)
    if names is None:
        names = [n for n in DEFAULT_EXPERT_TENSORS if getattr(module, n, None) is not None]
    return list(names)


Leaf = tuple[nn.Module, str]


def expert_leaves(module: nn.Module) -> list[Leaf]:
    """Every (owner, attribute) tensor stacked per expert, in a fixed order."""
    leaves: list[Leaf] = []
    for name in expert_tensor_names(module):
        value = getattr(module, name)
        if isinstance(value, torch.Tensor):
            leaves.append((module, name))
        elif isinstance(value, nn.Module):
            own = [*value._parameters.items(), *value._buffers.items()]
            leaves.extend((value, n) for n, t in own if t is not None)
        else:
            raise TypeError(f"expert stack {name!r} is a {type(value).__name__}")
    return leaves


def leaf_tensor(leaf: Leaf) -> torch.Tensor:
    value = getattr(*leaf)
    assert isinstance(value, torch.Tensor)
    return value


def num_experts(module: nn.Module) -> int:
    return int(leaf_tensor(expert_leaves(module)[0]).shape[0])


def set_leaf(leaf: Leaf, value: torch.Tensor) -> None:
    """Replace one stacked tensor (parameter or buffer) by ``value``."""
    owner, name = leaf
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(value, requires_grad=False)
    elif name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)


def keep_experts(module: nn.Module, experts: list[int]) -> None:
    """Keep only ``experts`` (logical ids, in local order); the rest is freed."""
    index = torch.tensor(experts, dtype=torch.long)
    for leaf in expert_leaves(module):
        full = leaf_tensor(leaf)
        set_leaf(leaf, full.index_select(0, index.to(full.device)).contiguous())


def _module_global(module: nn.Module, name: str) -> Any:
    """A global of the Python module defining ``type(module)`` (also when pickled by value)."""
    py_module = sys.modules.get(type(module).__module__)
    if py_module is not None and hasattr(py_module, name):
        return getattr(py_module, name)
    return type(module).forward.__globals__.get(name)


def expert_function(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(x [N, H], ids [N]) -> [N, H]``: row ``i`` through local expert ``ids[i]``.

    Calls the ``grouped_expert_forward`` of the module's own Python module with the
    module's (local) stacks, and with ``b_in``/``b_out``/``w_gate`` when the module has
    them and the function takes them.
    """
    fn = _module_global(module, "grouped_expert_forward")
    if fn is None:
        raise TypeError(
            f"{type(module).__name__}: no module-level grouped_expert_forward to compute "
            "experts with"
        )
    accepted = inspect.signature(fn).parameters
    optional = [n for n in _OPTIONAL_ARGS if n in accepted]

    def compute(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(ids.shape[0], 1, dtype=x.dtype, device=x.device)
        kwargs = {n: getattr(module, n) for n in optional if getattr(module, n, None) is not None}
        return fn(x, ids.unsqueeze(1), ones, module.w_in, module.w_out, **kwargs)

    return compute
