"""The aggregator's secure rounds: Flower's SecAgg+ workflow (needs ``flwr``).

Each round samples exactly ``min-clients`` sites and runs the four SecAgg+ stages (keys,
shares, masked updates, unmasking) with the parameters of
:func:`mmo_serving.federated.secure.derive`. The workflow hands the strategy only the
unmasked *mean* of the sites' updates; :class:`SecureDeltaFedAvg` checks it (head-shaped,
finite, from at least ``min-clients`` sites) and adds it to the global head.

A round fails -- recorded in ``OUT/rounds.jsonl`` and the metric, then the run stops
with the reason -- when the protocol halts (more sites dropped than the reconstruction
threshold tolerates) or the sum holds fewer than ``min-clients`` updates; it is never
averaged over fewer sites. A site that drops after sending its masked update is still
in the sum: the other sites' shares remove its mask.

:class:`RecordingGrid` sits at the ServerApp's message boundary and logs every reply
(stage, records, shapes; never values) to ``OUT/arrivals.jsonl``; with ``keep-received``
it also keeps the masked vectors exactly as they arrived (``OUT/received/``), which the
tests compare with what the sites sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Context, Message
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from mmo_serving.federated import secure
from mmo_serving.federated.aggregate import shapes_of, update_problem
from mmo_serving.federated.rounds import RoundFailed, RoundLog
from mmo_serving.federated.site import PARAM_NAMES


class SecureDeltaFedAvg(FedAvg):
    """FedAvg over the mean that SecAgg+ reveals (legacy Strategy API, as the workflow needs)."""

    def __init__(
        self,
        *,
        min_clients: int,
        initial: Mapping[str, np.ndarray],
        train_config: Mapping[str, Scalar],
        rounds: RoundLog,
        out_dir: Path | None,
    ) -> None:
        super().__init__(
            fraction_fit=0.0,
            fraction_evaluate=0.0,
            min_fit_clients=min_clients,
            min_evaluate_clients=0,
            min_available_clients=min_clients,
        )
        self.min_clients = min_clients
        self.initial = {k: np.asarray(initial[k]) for k in PARAM_NAMES}
        self.train_config = dict(train_config)
        self.rounds = rounds
        self.out_dir = out_dir
        self.current: dict[str, np.ndarray] = dict(self.initial)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters:
        return ndarrays_to_parameters([self.initial[k] for k in PARAM_NAMES])

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        arrays = parameters_to_ndarrays(parameters)
        self.current = {
            k: a.astype(self.initial[k].dtype) for k, a in zip(PARAM_NAMES, arrays, strict=True)
        }
        clients = client_manager.sample(self.min_clients, self.min_clients)
        config = {**self.train_config, "server-round": server_round}
        return [(c, FitIns(parameters, dict(config))) for c in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if len(results) < self.min_clients:
            raise RoundFailed(
                f"round {server_round}: only {len(results)} masked updates arrived, fewer than "
                f"min-clients {self.min_clients}; not averaging fewer sites"
            )
        # the workflow gives every result the same parameters: the unmasked mean
        arrays = parameters_to_ndarrays(results[0][1].parameters)
        mean = dict(zip(PARAM_NAMES, arrays, strict=True))
        mean = {k: v.astype(self.initial[k].dtype) for k, v in mean.items()}
        problem = update_problem(mean, shapes_of(self.initial))
        if problem:
            raise RoundFailed(f"round {server_round}: the aggregate is unusable: {problem}")
        if self.out_dir is not None:
            np.savez(self.out_dir / f"aggregate-{server_round}.npz", **mean)
        self.current = {k: self.current[k] + mean[k] for k in PARAM_NAMES}
        self.rounds.record(server_round, "aggregated", sites=len(results))
        return ndarrays_to_parameters([self.current[k] for k in PARAM_NAMES]), {}

    def configure_evaluate(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def evaluate(self, *args: Any, **kwargs: Any) -> None:
        return None


class CheckedSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ whose halt is an error (Flower's own only logs it and skips the round), and
    that does not unmask a sum of fewer than ``min_clients`` masked updates (Flower's
    would, down to the reconstruction threshold)."""

    def __init__(self, *, min_clients: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_clients = min_clients

    def __call__(self, grid: Grid, context: Context) -> None:
        ctx = cast(LegacyContext, context)
        state = WorkflowState()
        steps = (
            ("setup", self.setup_stage),
            ("share keys", self.share_keys_stage),
            ("collect masked vectors", self.collect_masked_vectors_stage),
            ("unmask", self.unmask_stage),
        )
        for name, step in steps:
            if not step(grid, ctx, state):
                raise RoundFailed(
                    f"secure aggregation halted at the {name} stage: "
                    f"{len(state.active_node_ids)} of {len(state.sampled_node_ids)} sites "
                    f"still answering, each site's secrets need {state.threshold} shares"
                )
            if name == "collect masked vectors" and len(state.active_node_ids) < self.min_clients:
                raise RoundFailed(
                    f"only {len(state.active_node_ids)} of {len(state.sampled_node_ids)} sites "
                    f"sent their masked update, fewer than min-clients {self.min_clients}: "
                    "not averaging fewer sites"
                )


class RecordingGrid:
    """The ServerApp's side of the message boundary, with a log of what arrives."""

    def __init__(self, grid: Grid, out_dir: Path | None, keep_received: bool) -> None:
        self._grid = grid
        self.out_dir = out_dir
        self.keep_received = keep_received and out_dir is not None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if self.out_dir is not None:
            with open(self.out_dir / "arrivals.jsonl", "a") as f:
                for msg in replies:
                    f.write(json.dumps(self._entry(msg), sort_keys=True) + "\n")
        return replies

    def _entry(self, msg: Message) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "round": int(msg.metadata.group_id or 0),
            "node": msg.metadata.src_node_id,
        }
        if msg.has_error():
            entry["error"] = msg.error.reason
            return entry
        content = msg.content
        entry["records"] = sorted(content.keys())
        entry["array_values"] = sum(
            len(rec) for rec in content.array_records.values()
        )  # SecAgg+ clears the plain update: 0
        configs = content.config_records.get(RECORD_KEY_CONFIGS)
        entry["secagg_keys"] = sorted(configs.keys()) if configs is not None else []
        masked = configs.get(SecAggKey.MASKED_PARAMETERS) if configs is not None else None
        if masked is not None:
            vectors = [bytes_to_ndarray(cast(bytes, b)) for b in cast(list[bytes], masked)]
            entry["masked"] = [[list(v.shape), str(v.dtype)] for v in vectors]
            if self.keep_received:
                assert self.out_dir is not None
                folder = self.out_dir / "received"
                folder.mkdir(exist_ok=True)
                name = f"masked-{entry['round']}-{entry['node']}.npz"
                np.savez(folder / name, *vectors)
        return entry


def run_secure(
    grid: Grid,
    context: Context,
    cfg: Mapping[str, Any],
    initial: Mapping[str, np.ndarray],
    train_config: Mapping[str, Scalar],
    rounds: RoundLog,
) -> dict[str, np.ndarray]:
    """All rounds with SecAgg+; returns the final head (raises :class:`RoundFailed`)."""
    min_clients = int(cfg.get("min-clients", 3))
    params = secure.derive(
        min_clients, float(cfg.get("clip-norm", 1.0)), float(cfg.get("noise-multiplier", 1.0))
    )
    bad = secure.problems(params)
    if bad:
        raise ValueError(f"secure aggregation with min-clients {min_clients}: " + "; ".join(bad))
    out_dir = Path(str(cfg["out-dir"])) if cfg.get("out-dir") else None
    strategy = SecureDeltaFedAvg(
        min_clients=min_clients,
        initial=initial,
        train_config=train_config,
        rounds=rounds,
        out_dir=out_dir,
    )
    num_rounds = int(cfg.get("num-rounds", 3))
    timeout = float(cfg.get("round-timeout", 600))
    legacy = LegacyContext(
        context,
        config=ServerConfig(num_rounds=num_rounds, round_timeout=timeout),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=CheckedSecAggPlus(
            min_clients=min_clients,
            num_shares=params.num_shares,
            reconstruction_threshold=params.reconstruction_threshold,
            max_weight=params.max_weight,
            clipping_range=params.clipping_range,
            quantization_range=params.quantization_range,
            modulus_range=params.modulus_range,
            timeout=timeout,
        )
    )
    if out_dir is not None:
        (out_dir / "secagg.json").write_text(json.dumps(params.__dict__, sort_keys=True))
    try:
        workflow(cast(Grid, RecordingGrid(grid, out_dir, bool(cfg.get("keep-received")))), legacy)
    except RoundFailed as exc:
        current = int(
            cast(int, legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        )
        rounds.record(current, "failed", reason=str(exc))
        raise
    return dict(strategy.current)
