"""Token dispatch between ranks: the ``dispatcher`` hook every MoE layer calls.

Protocol (one *round* per MoE-layer call, on every rank of the group):

1. header ``all_to_all``: each rank tells each other rank how many (token, expert) rows
   it sends it, for which MoE layer, and whether it is *done* (has no more work);
2. payload ``all_to_all``: the rows (hidden vectors) with the index of the expert in the
   receiver's local stack (an extra column in float32, a second collective otherwise);
3. the receiver computes its rows with the model's grouped expert forward, on its own
   experts of the layer each sender named, and counts them per (layer, expert);
4. result ``all_to_all`` back (the reverse split), and the sender combines the rows with
   the router weights (``index_add``).

Because every header carries the sender's layer, ranks need not run the same program:
a rank with fewer requests, shorter prompts or fewer decode steps simply finishes, then
calls :meth:`ExpertDispatcher.finish`, which keeps answering rounds (sending nothing,
computing what it receives) until every rank is done. So every rank runs the same
number of rounds, whatever each one generates, and the collectives always match. With
one rank there is no group: rows are computed locally and only counted.

If computing received rows fails, the rank still answers the round (with zeros) and
raises afterwards, so that an error on one rank never leaves the others waiting.
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist
from torch import nn

from mmo_serving.config import PlacementPlan
from mmo_serving.engine.experts import (
    expert_function,
    expert_leaves,
    layer_index,
    leaf_tensor,
    set_leaf,
)
from mmo_serving.engine.routing import LayerRoute, layer_routes, transfer_sources

_COUNT, _LAYER, _DONE = 0, 1, 2


class _Tables:
    """Routing tables of one layer as tensors on the rank's device."""

    def __init__(self, route: LayerRoute, rank: int, device: torch.device) -> None:
        num_experts = len(route.copies)
        width = max(len(c) for c in route.copies)
        copy_rank = torch.zeros(num_experts, width, dtype=torch.long)
        copy_local = torch.zeros(num_experts, width, dtype=torch.long)
        for e, copies in enumerate(route.copies):
            for j, (r, local) in enumerate(copies):
                copy_rank[e, j], copy_local[e, j] = r, local
        self.copy_rank = copy_rank.to(device)
        self.copy_local = copy_local.to(device)
        self.n_copies = torch.tensor([len(c) for c in route.copies], device=device)
        self.local_to_logical = torch.tensor(
            route.local_experts[rank], dtype=torch.long, device=device
        )


class ExpertDispatcher:
    """Sends each (token, expert) pair to a rank holding the expert; counts the load."""

    def __init__(
        self,
        layers: list[nn.Module],
        plan: PlacementPlan,
        *,
        rank: int,
        world: int,
        device: torch.device,
        hidden_size: int,
        act_dtype: torch.dtype,
    ) -> None:
        self.layers = layers
        self.rank, self.world, self.device = rank, world, device
        self.hidden_size, self.act_dtype = hidden_size, act_dtype
        self.num_experts = plan.num_experts
        self._fns = [expert_function(m) for m in layers]
        self._lock = threading.Lock()
        shape = (len(layers), plan.num_experts)
        self._total = torch.zeros(shape, dtype=torch.long, device=device)
        self._window = torch.zeros(shape, dtype=torch.long, device=device)
        self.plan_version = 0
        self.rounds = 0  # dispatch rounds run (collective exchanges), for benchmarks
        # float32/64 hold every local expert index exactly: send it inside the payload
        self._pack_ids = act_dtype in (torch.float32, torch.float64)
        self._pending: BaseException | None = None
        self._install(plan)

    def _install(self, plan: PlacementPlan) -> None:
        self.plan = plan
        self.routes = layer_routes(plan)
        self._tables = [_Tables(r, self.rank, self.device) for r in self.routes]

    # -- the hook -------------------------------------------------------------------
    def __call__(
        self, module: nn.Module, x2d: torch.Tensor, topk_ids: torch.Tensor, topk_w: torch.Tensor
    ) -> torch.Tensor:
        layer = layer_index(module)
        tables = self._tables[layer]
        n_tok, k = topk_ids.shape
        flat = topk_ids.reshape(-1)
        tok = torch.arange(n_tok, device=x2d.device).repeat_interleave(k)
        choice = (tok + self.rank) % tables.n_copies[flat]
        dest = tables.copy_rank[flat, choice]
        local = tables.copy_local[flat, choice]
        weights = topk_w.reshape(-1)
        if self.world == 1:
            out = self._compute(layer, x2d[tok], local)
            self._raise_pending()
        else:
            order = torch.argsort(dest, stable=True)
            tok, local, weights = tok[order], local[order], weights[order]
            counts = torch.bincount(dest, minlength=self.world)
            rows = x2d[tok].to(self.act_dtype)
            out, _ = self._round(layer, counts, rows, local, done=False)
            self._raise_pending()
        y = torch.zeros_like(x2d)
        y.index_add_(0, tok, out.to(x2d.dtype) * weights.to(x2d.dtype).unsqueeze(1))
        return y

    def finish(self) -> None:
        """Answer rounds until every rank is done (a no-op with one rank)."""
        if self.world > 1:
            idle_counts = torch.zeros(self.world, dtype=torch.long, device=self.device)
            rows = torch.empty(0, self.hidden_size, dtype=self.act_dtype, device=self.device)
            ids = torch.empty(0, dtype=torch.long, device=self.device)
            while True:
                _, all_done = self._round(-1, idle_counts, rows, ids, done=True)
                if all_done:
                    break
        self._raise_pending()

    # -- one round ------------------------------------------------------------------
    def _round(
        self,
        layer: int,
        counts: torch.Tensor,
        rows: torch.Tensor,
        ids: torch.Tensor,
        *,
        done: bool,
    ) -> tuple[torch.Tensor, bool]:
        self.rounds += 1
        header = torch.empty(self.world, 3, dtype=torch.long, device=self.device)
        header[:, _COUNT] = counts
        header[:, _LAYER] = layer
        header[:, _DONE] = int(done)
        got = torch.empty_like(header)
        dist.all_to_all_single(got, header)
        got_list = got.tolist()
        if all(h[_DONE] for h in got_list):
            return rows, True
        send = counts.tolist()
        recv = [h[_COUNT] for h in got_list]
        if self._pack_ids:  # one collective: the local expert index rides as a column
            packed = torch.cat([rows, ids.to(rows.dtype).unsqueeze(1)], 1)
            got_rows = rows.new_empty(sum(recv), self.hidden_size + 1)
            dist.all_to_all_single(got_rows, packed, recv, send)
            in_rows, in_ids = got_rows[:, :-1], got_rows[:, -1].long()
        else:
            in_rows = rows.new_empty(sum(recv), self.hidden_size)
            dist.all_to_all_single(in_rows, rows, recv, send)
            in_ids = ids.new_empty(sum(recv))
            dist.all_to_all_single(in_ids, ids, recv, send)
        src_layers = [h[_LAYER] for h in got_list]
        out = self._compute_received(in_rows, in_ids, recv, src_layers)
        back = rows.new_empty(sum(send), self.hidden_size)
        dist.all_to_all_single(back, out, send, recv)
        return back, False

    def _compute_received(
        self, rows: torch.Tensor, ids: torch.Tensor, recv: list[int], src_layers: list[int]
    ) -> torch.Tensor:
        layers = sorted({src_layers[s] for s, n in enumerate(recv) if n > 0})
        if not layers:
            return rows
        if len(layers) == 1:
            return self._compute(layers[0], rows, ids).to(rows.dtype)
        row_layer = torch.repeat_interleave(
            torch.tensor(src_layers, device=rows.device), torch.tensor(recv, device=rows.device)
        )
        out = torch.zeros_like(rows)
        for layer in layers:
            idx = (row_layer == layer).nonzero().squeeze(1)
            out[idx] = self._compute(layer, rows[idx], ids[idx]).to(rows.dtype)
        return out

    def _compute(self, layer: int, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows through this rank's local experts ``ids`` of ``layer``; counted."""
        if rows.shape[0] == 0:
            return rows
        try:
            out = self._fns[layer](rows, ids)
        except Exception as exc:  # answered with zeros, raised after the round
            if self._pending is None:
                self._pending = exc
            return torch.zeros_like(rows)
        logical = self._tables[layer].local_to_logical[ids]
        added = torch.bincount(logical, minlength=self.num_experts)
        with self._lock:
            self._total[layer] += added
            self._window[layer] += added
        return out

    def _raise_pending(self) -> None:
        if self._pending is not None:
            exc, self._pending = self._pending, None
            raise exc

    # -- load report and plan changes -----------------------------------------------
    def counts(self) -> tuple[list[list[int]], list[list[int]], int]:
        """(cumulative [layer][expert], since-plan [layer][expert], plan version)."""
        with self._lock:
            return self._total.tolist(), self._window.tolist(), self.plan_version

    def held_experts(self) -> list[list[int]]:
        """Per layer, the logical experts this rank holds (in local-stack order)."""
        return [list(r.local_experts[self.rank]) for r in self.routes]

    def apply_plan(self, plan: PlacementPlan) -> int:
        """Move expert weights to match ``plan`` (all ranks call this together).

        Weights a rank newly needs come from a rank that holds them now (one
        ``all_to_all`` per layer and stacked tensor); nothing is reloaded from the
        checkpoint. Returns the number of expert copies this rank received.
        """
        new_routes = layer_routes(plan)
        received = 0
        for layer, module in enumerate(self.layers):
            received += self._move_layer(module, self.routes[layer], new_routes[layer])
        with self._lock:
            self._window.zero_()
            self.plan_version += 1
            self._install(plan)
        return received

    def _move_layer(self, module: nn.Module, old: LayerRoute, new: LayerRoute) -> int:
        sources = transfer_sources(old, new)
        me = self.rank
        mine_old, mine_new = old.local_experts[me], new.local_experts[me]
        send_lists = [
            [e for e in new.local_experts[d] if sources.get((d, e)) == me]
            for d in range(self.world)
        ]
        recv_lists = [[e for e in mine_new if sources.get((me, e)) == s] for s in range(self.world)]
        for leaf in expert_leaves(module):
            stack = leaf_tensor(leaf)
            inner = tuple(stack.shape[1:])
            per = 1
            for d in inner:
                per *= d
            incoming: dict[int, torch.Tensor] = {}
            if sources and self.world > 1:
                parts = [stack[mine_old.index(e)].reshape(-1) for lst in send_lists for e in lst]
                send_buf = torch.cat(parts) if parts else stack.new_empty(0)
                recv_buf = stack.new_empty(per * sum(len(lst) for lst in recv_lists))
                dist.all_to_all_single(
                    recv_buf,
                    send_buf,
                    [per * len(lst) for lst in recv_lists],
                    [per * len(lst) for lst in send_lists],
                )
                offset = 0
                for lst in recv_lists:
                    for e in lst:
                        incoming[e] = recv_buf[offset : offset + per].view(inner)
                        offset += per
            rows = [stack[mine_old.index(e)] if e in mine_old else incoming[e] for e in mine_new]
            new_stack = torch.stack(rows) if rows else stack.new_empty((0, *inner))
            set_leaf(leaf, new_stack.contiguous())
        return sum(len(lst) for lst in recv_lists)
