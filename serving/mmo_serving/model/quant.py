"""INT8 dynamic quantization of the attention linears and the expert stacks.

Weights: symmetric int8 per output channel (scale = max|w| / 127 per column of the
``x @ W`` form). Activations: quantized dynamically per token (scale = max|x| / 127 per
row) and multiplied with ``torch._int_mm`` (int8 x int8 -> int32, a CPU and CUDA kernel),
then rescaled. Routers, norms, embeddings, the conv stem and the heads stay float32.

Why our own and not ``torch.ao.quantization.quantize_dynamic`` or torchao: the former is
deprecated in torch 2.13, and both only rewrite ``nn.Linear`` modules; the experts here
are stacked 3-D parameters ``w_in [E, H, I]`` / ``w_out [E, I, H]`` that the grouped
kernel indexes per expert, so neither would touch them (most of the model's weights).
The scheme is the same as torchao's int8-dynamic-activation/int8-weight.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from mmo_serving.model.moe import MoEFeedForward

M = TypeVar("M", bound=nn.Module)

_INT_MM_MIN_ROWS = 17  # torch._int_mm needs M > 16 on some backends; pad small batches


def quantize_weight(w: torch.Tensor, dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric int8 of a weight used as ``x @ w`` (reduce over ``dim``)."""
    amax = w.detach().abs().amax(dim=dim, keepdim=True).clamp(min=1e-8)
    scale = amax / 127.0
    q = torch.round(w.detach() / scale).clamp(-127, 127).to(torch.int8)
    return q, scale.squeeze(dim).float()


def int8_matmul(x: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] float @ (q [K, N] int8 * w_scale [N]) with dynamic per-row int8 x."""
    m = x.shape[0]
    if m == 0:
        return x.new_zeros(0, q.shape[1])
    xf = x.float()
    x_scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
    xq = torch.round(xf / x_scale).clamp(-127, 127).to(torch.int8)
    if m < _INT_MM_MIN_ROWS:
        xq = torch.cat([xq, xq.new_zeros(_INT_MM_MIN_ROWS - m, xq.shape[1])])
    acc = torch._int_mm(xq, q)[:m]
    return (acc.float() * x_scale * w_scale).to(x.dtype)


class Int8Linear(nn.Module):
    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, s = quantize_weight(linear.weight.t().contiguous())
        self.register_buffer("qweight", q.contiguous())  # [in, out]
        self.register_buffer("scale", s)  # [out]
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_matmul(x.reshape(-1, self.in_features), self.qweight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class Int8ExpertStack(nn.Module):
    """Stacked expert weights [E, K, N] in int8 with scales [E, N]."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, w: torch.Tensor):
        super().__init__()
        q, s = quantize_weight(w, dim=1)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scale", s)

    @property
    def shape(self) -> torch.Size:
        return self.qweight.shape

    def expert_mm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return int8_matmul(x, self.qweight[i], self.scale[i])

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None, :]


def quantize_int8(model: M) -> M:
    """In place: attention ``nn.Linear`` -> ``Int8Linear``; each ``MoEFeedForward``'s
    ``w_in``/``w_out`` -> ``Int8ExpertStack`` (router stays float32). Returns the model."""
    for mod in list(model.modules()):
        if isinstance(mod, MoEFeedForward):
            w_in, w_out = mod.w_in, mod.w_out
            del mod.w_in, mod.w_out
            mod.w_in = Int8ExpertStack(w_in.data)  # type: ignore[assignment]
            mod.w_out = Int8ExpertStack(w_out.data)  # type: ignore[assignment]
        attn = getattr(mod, "attn", None)
        if attn is not None:
            for name in ("qkv", "proj"):
                lin = getattr(attn, name)
                if isinstance(lin, nn.Linear):
                    setattr(attn, name, Int8Linear(lin))
    return model


def quantized_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of the quantized layers now, bytes the same layers take in float32)."""
    now = fp32 = 0
    for mod in model.modules():
        if isinstance(mod, Int8Linear | Int8ExpertStack):
            now += mod.qweight.numel() * 1 + mod.scale.numel() * 4
            fp32 += mod.qweight.numel() * 4
    return now, fp32


def float_layer_bytes(model: nn.Module) -> int:
    """float32 bytes of the layers ``quantize_int8`` would quantize (weights only)."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, MoEFeedForward):
            total += (mod.w_in.numel() + mod.w_out.numel()) * 4
        attn = getattr(mod, "attn", None)
        if attn is not None:
            total += sum(getattr(attn, n).weight.numel() * 4 for n in ("qkv", "proj"))
    return total
