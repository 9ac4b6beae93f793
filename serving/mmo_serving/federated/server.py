"""The Flower ServerApp of the aggregator (needs ``flwr``: the ``federated`` extra).

``DeltaFedAvg`` is Flower's FedAvg over the sites' privatized *updates*: each round it
sends the global answer head, checks every reply (exactly the head's arrays, one
``metrics`` record, nothing else; see :mod:`.aggregate`), averages the accepted updates
with equal weights and adds the mean to the global head. What arrived is recorded, per
reply, in ``OUT/arrivals.jsonl`` (names, shapes, dtypes, record names -- no values) when
the run config sets ``out-dir``; the initial and final heads go to ``OUT/initial.npz``
and ``OUT/final.npz``; every round's outcome to ``OUT/rounds.jsonl`` and
``OUT/metrics.prom`` (:mod:`.rounds`).

With ``secure-aggregation`` in the run config the rounds run Flower's SecAgg+ workflow
instead (:mod:`.secure_server`): the aggregator never holds one site's update.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from mmo_serving.federated.aggregate import Shapes, mean_update, shapes_of, update_problem
from mmo_serving.federated.dp import global_norm
from mmo_serving.federated.rounds import RoundLog
from mmo_serving.federated.secure_server import run_secure

app = ServerApp()


def _to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


class DeltaFedAvg(FedAvg):
    def __init__(
        self, *, min_clients: int, expected: Shapes, out_dir: Path | None, rounds: RoundLog
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=min_clients,
            min_available_nodes=min_clients,
            weighted_by_key="weight",
        )
        self.expected = expected
        self.out_dir = out_dir
        self.rounds = rounds
        self.current: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = _to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def _record(self, entry: dict[str, Any]) -> None:
        if self.out_dir is not None:
            with open(self.out_dir / "arrivals.jsonl", "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[dict[str, np.ndarray]] = []
        for msg in replies:
            entry: dict[str, Any] = {"round": server_round, "node": msg.metadata.src_node_id}
            if msg.has_error():
                entry["error"] = msg.error.reason
                self._record(entry)
                continue
            content = msg.content
            entry["records"] = sorted(content.keys())
            entry["arrays"] = {
                name: {k: [list(s), d] for k, (s, d) in shapes_of(_to_numpy(rec)).items()}
                for name, rec in content.array_records.items()
            }
            entry["metrics"] = {
                name: sorted(rec.keys()) for name, rec in content.metric_records.items()
            }
            entry["configs"] = sorted(content.config_records.keys())
            others = [k for k in content if k not in ("arrays", "metrics")]
            metrics = content.metric_records.get("metrics")
            if metrics is None or sorted(metrics.keys()) != ["weight"]:
                others.append("metrics" if metrics is None else f"metrics{sorted(metrics.keys())}")
            arrays = content.array_records.get("arrays")
            update = _to_numpy(arrays) if arrays is not None else {}
            problem = update_problem(update, self.expected, others)
            entry["accepted"] = problem is None
            if problem:
                entry["refused"] = problem
            else:
                accepted.append(update)
                entry["update_norm"] = global_norm(list(update.values()))
            self._record(entry)
        if not accepted:
            self.rounds.record(server_round, "failed", sites=0, reason="no accepted update")
            return None, None
        self.rounds.record(server_round, "aggregated", sites=len(accepted))
        new = mean_update(self.current, accepted)
        return _to_record(new), MetricRecord({"accepted": len(accepted)})


def _run_config(context: Context) -> dict[str, Any]:
    return dict(context.run_config)


@app.main()
def main(grid: Grid, context: Context) -> None:
    from mmo_serving.federated import head

    cfg = _run_config(context)
    out_dir = Path(str(cfg["out-dir"])) if cfg.get("out-dir") else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = head.load_base(str(cfg.get("model-source", "builtin://shapes-moe")))
    initial = head.initial_head(model, tok, str(cfg.get("head-init", "checkpoint")))
    train_config: dict[str, Any] = {
        k: cfg[k] for k in ("clip-norm", "noise-multiplier", "local-epochs", "lr") if k in cfg
    }
    num_rounds = int(cfg.get("num-rounds", 3))
    secure = bool(cfg.get("secure-aggregation", False))
    rounds = RoundLog(out_dir, secure)
    if secure:
        final = run_secure(grid, context, cfg, initial, train_config, rounds)
    else:
        strategy = DeltaFedAvg(
            min_clients=int(cfg.get("min-clients", 3)),
            expected=shapes_of(initial),
            out_dir=out_dir,
            rounds=rounds,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=_to_record(initial),
            num_rounds=num_rounds,
            train_config=ConfigRecord(train_config),
            timeout=float(cfg.get("round-timeout", 600)),
        )
        final = _to_numpy(result.arrays)
    if out_dir is not None:
        np.savez(out_dir / "initial.npz", **dict[str, Any](initial))
        np.savez(out_dir / "final.npz", **dict[str, Any](final))
        done = {"rounds": num_rounds, "secure": secure, "outcomes": dict(rounds.counts)}
        (out_dir / "done.json").write_text(json.dumps(done))
