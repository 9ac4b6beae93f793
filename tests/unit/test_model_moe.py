"""The routed MoE layer: grouped compute equals the dense reference, partial expert sets
add up, the dispatcher and route hooks are honoured, gradients flow."""

from __future__ import annotations

import torch

from mmo_serving.model.moe import MoEFeedForward, dense_expert_forward, grouped_expert_forward


def _layer(shared: int = 0, seed: int = 0) -> MoEFeedForward:
    torch.manual_seed(seed)
    layer = MoEFeedForward(d_model=16, d_expert=24, n_experts=8, top_k=2, shared_hidden=shared)
    with torch.no_grad():
        layer.b_in.normal_()
        layer.b_out.normal_()
    return layer.eval()


def _naive(layer: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert: the obvious (slow) definition."""
    ids, w = layer.route(x)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            h = torch.nn.functional.gelu(x[t] @ layer.w_in[e] + layer.b_in[e])
            out[t] += w[t, j] * (h @ layer.w_out[e] + layer.b_out[e])
    return out


def test_grouped_forward_equals_naive_and_dense_reference() -> None:
    layer = _layer()
    x = torch.randn(37, 16)
    ids, w = layer.route(x)
    grouped = grouped_expert_forward(x, ids, w, layer.w_in, layer.w_out, layer.b_in, layer.b_out)
    dense = dense_expert_forward(x, ids, w, layer.w_in, layer.w_out, layer.b_in, layer.b_out)
    naive = _naive(layer, x)
    torch.testing.assert_close(grouped, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense, naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), naive, rtol=1e-5, atol=1e-5)


def test_route_returns_topk_ids_and_normalised_float32_weights() -> None:
    layer = _layer()
    ids, w = layer.route(torch.randn(10, 16))
    assert ids.shape == (10, 2) and ids.dtype == torch.long
    assert w.dtype == torch.float32
    torch.testing.assert_close(w.sum(-1), torch.ones(10))
    assert bool((ids[:, 0] != ids[:, 1]).all())


def test_partial_expert_sets_sum_to_the_full_result() -> None:
    """What an expert-parallel engine does: each rank computes the experts it holds."""
    layer = _layer()
    x = torch.randn(50, 16)
    ids, w = layer.route(x)
    full = grouped_expert_forward(x, ids, w, layer.w_in, layer.w_out, layer.b_in, layer.b_out)
    total = torch.zeros_like(x)
    for held in ([0, 3, 5], [1, 2], [4, 6, 7]):
        total += grouped_expert_forward(
            x,
            ids,
            w,
            layer.w_in[held],
            layer.w_out[held],
            layer.b_in[held],
            layer.b_out[held],
            experts=held,
        )
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-5)


def test_empty_input_and_unused_experts() -> None:
    layer = _layer()
    x = torch.randn(0, 16)
    ids = torch.zeros(0, 2, dtype=torch.long)
    assert grouped_expert_forward(x, ids, torch.zeros(0, 2), layer.w_in, layer.w_out).shape == (
        0,
        16,
    )
    x = torch.randn(4, 16)
    ids = torch.tensor([[7, 7]] * 4)  # only the last expert is used
    w = torch.full((4, 2), 0.5)
    out = grouped_expert_forward(x, ids, w, layer.w_in, layer.w_out)
    ref = dense_expert_forward(x, ids, w, layer.w_in, layer.w_out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_dispatcher_replaces_local_compute_and_shared_expert_is_added() -> None:
    layer = _layer(shared=8)
    x = torch.randn(6, 16)
    calls = []

    def dispatcher(mod, x2d, ids, w):
        calls.append((mod.moe_layer_index, ids.shape))
        return torch.zeros_like(x2d)

    layer.dispatcher = dispatcher
    y = layer(x)
    assert calls == [(0, (6, 2))]
    assert layer.shared is not None
    torch.testing.assert_close(y, layer.shared(x))


def test_route_hook_sees_every_token() -> None:
    layer = _layer()
    seen = []
    layer.route_hook = lambda mod, ids, is_image: seen.append((ids.shape[0], is_image))
    flags = torch.tensor([True, False, True])
    layer(torch.randn(3, 16), flags)
    assert seen[0][0] == 3 and seen[0][1] is flags


def test_gradients_reach_routed_experts_and_router() -> None:
    layer = _layer().train()
    x = torch.randn(40, 16, requires_grad=True)
    y = layer(x)
    (y.square().mean() + layer.aux_loss).backward()
    assert layer.w_in.grad is not None and layer.w_in.grad.abs().sum() > 0
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0
    assert x.grad is not None
    assert layer.aux_loss is not None and float(layer.aux_loss.detach()) > 0
