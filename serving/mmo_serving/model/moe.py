"""Routed mixture-of-experts feed-forward layer.

``MoEFeedForward`` keeps its experts as stacked weights ``w_in [E, H, I]`` and
``w_out [E, I, H]`` (biases ``b_in [E, I]``, ``b_out [E, H]``), a float32 ``router``
and an optional always-on ``shared`` expert. Its forward routes each token to ``top_k``
experts and computes them with ``grouped_expert_forward``: the (token, expert) pairs are
sorted by expert (one argsort) and each expert runs one matmul on its contiguous block
of tokens — no per-token Python loop. An engine that places experts on several devices
sets ``dispatcher``; the layer then calls ``dispatcher(self, x2d, topk_ids, topk_w)``
instead of the local compute and adds the shared expert itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Dispatcher = Callable[["MoEFeedForward", torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
RouteHook = Callable[["MoEFeedForward", torch.Tensor, torch.Tensor | None], None]


def _expert_mm(x: torch.Tensor, w: Any, i: int) -> torch.Tensor:
    """x @ w[i] for a float stack, or the quantized stack's own kernel."""
    if isinstance(w, torch.Tensor):
        return x @ w[i]
    return w.expert_mm(i, x)


def grouped_expert_forward(
    x2d: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_w: torch.Tensor,
    w_in: Any,
    w_out: Any,
    b_in: torch.Tensor | None = None,
    b_out: torch.Tensor | None = None,
    experts: Sequence[int] | None = None,
    activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
) -> torch.Tensor:
    """Weighted sum of the routed experts' outputs, tokens grouped by expert.

    x2d [T, H]; topk_ids [T, k] (global expert ids); topk_w [T, k].
    ``experts``: the global ids whose weights ``w_in[i]``/``w_out[i]`` hold (default: all,
    ``w_in[e]`` is expert ``e``). Tokens routed to experts not in the list contribute
    nothing, so an engine can sum the partial results of several ranks.
    Returns [T, H] in x2d's dtype.
    """
    t, k = topk_ids.shape
    out = torch.zeros_like(x2d)
    if t == 0:
        return out
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sorted_ids = flat[order]
    n_ids = int(sorted_ids[-1].item()) + 1
    if experts is None:
        experts = range(w_in.shape[0])
    n_ids = max(n_ids, max(experts, default=-1) + 1)
    counts = torch.bincount(sorted_ids, minlength=n_ids).tolist()
    starts = [0] * n_ids
    for e in range(1, n_ids):
        starts[e] = starts[e - 1] + counts[e - 1]
    token_of = order // k
    weights = topk_w.reshape(-1)[order].to(x2d.dtype)
    chunks: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    for i, e in enumerate(experts):
        c = counts[e]
        if c == 0:
            continue
        s = starts[e]
        idx = token_of[s : s + c]
        h = _expert_mm(x2d.index_select(0, idx), w_in, i)
        if b_in is not None:
            h = h + b_in[i]
        h = _expert_mm(activation(h), w_out, i)
        if b_out is not None:
            h = h + b_out[i]
        chunks.append(h * weights[s : s + c, None])
        rows.append(idx)
    if chunks:
        out = out.index_add(0, torch.cat(rows), torch.cat(chunks).to(x2d.dtype))
    return out


def dense_expert_forward(
    x2d: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_w: torch.Tensor,
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    b_in: torch.Tensor | None = None,
    b_out: torch.Tensor | None = None,
    activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
) -> torch.Tensor:
    """Reference: every expert on every token, then the routed weights select.
    (What a layer without grouping costs: E/k times the FLOPs.)"""
    h = torch.einsum("th,ehi->eti", x2d, w_in)
    if b_in is not None:
        h = h + b_in[:, None, :]
    y = torch.einsum("eti,eih->eth", activation(h), w_out)
    if b_out is not None:
        y = y + b_out[:, None, :]
    gate = torch.zeros(x2d.shape[0], w_in.shape[0], dtype=x2d.dtype, device=x2d.device)
    gate.scatter_add_(1, topk_ids, topk_w.to(x2d.dtype))
    return torch.einsum("te,eth->th", gate, y)


class SharedExpert(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoEFeedForward(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_expert: int,
        n_experts: int,
        top_k: int,
        moe_layer_index: int = 0,
        shared_hidden: int = 0,
    ):
        super().__init__()
        self.d_model, self.d_expert = d_model, d_expert
        self.n_experts, self.top_k = n_experts, top_k
        self.moe_layer_index = moe_layer_index
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(n_experts, d_model, d_expert))
        self.b_in = nn.Parameter(torch.zeros(n_experts, d_expert))
        self.w_out = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        self.b_out = nn.Parameter(torch.zeros(n_experts, d_model))
        self.shared: nn.Module | None = (
            SharedExpert(d_model, shared_hidden) if shared_hidden else None
        )
        self.dispatcher: Dispatcher | None = None
        self.route_hook: RouteHook | None = None  # called with (self, topk_ids, is_image)
        self.aux_loss: torch.Tensor | None = None  # load-balancing loss of the last forward
        nn.init.normal_(self.w_in, std=d_model**-0.5)
        nn.init.normal_(self.w_out, std=d_expert**-0.5 / 2)
        nn.init.normal_(self.router.weight, std=0.02)

    def route(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_ids [T, k] long, topk_w [T, k] float32, renormalised over the k)."""
        logits = F.linear(x2d.float(), self.router.weight.float())
        probs = logits.softmax(-1)
        topk_w, topk_ids = probs.topk(self.top_k, dim=-1)
        topk_w = topk_w / topk_w.sum(-1, keepdim=True)
        if self.training:
            # Switch-style balance loss: E * sum_e (fraction routed to e) * (mean prob of e)
            frac = torch.zeros(self.n_experts, device=x2d.device)
            frac.scatter_add_(
                0, topk_ids.reshape(-1), torch.ones(topk_ids.numel(), device=x2d.device)
            )
            frac = frac / max(1, topk_ids.numel())
            self.aux_loss = self.n_experts * (frac * probs.mean(0)).sum()
        return topk_ids, topk_w

    def forward(self, x2d: torch.Tensor, is_image: torch.Tensor | None = None) -> torch.Tensor:
        """x2d [T, H] (valid tokens only); ``is_image`` [T] bool, for routing statistics."""
        topk_ids, topk_w = self.route(x2d)
        if self.route_hook is not None:
            self.route_hook(self, topk_ids, is_image)
        if self.dispatcher is not None:
            y = self.dispatcher(self, x2d, topk_ids, topk_w)
        else:
            y = grouped_expert_forward(
                x2d, topk_ids, topk_w, self.w_in, self.w_out, self.b_in, self.b_out
            )
        if self.shared is not None:
            y = y + self.shared(x2d)
        return y
