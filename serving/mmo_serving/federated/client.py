"""The Flower ClientApp of a site (needs ``flwr``: the ``federated`` extra, own venv).

On each ``train`` message it takes the global answer head from the message, runs
:func:`mmo_serving.federated.site.local_round` on the site's local data and replies with
the clipped, noised update (same names and shapes as the head) and weight 1.0: every
site counts the same, so the reply does not even reveal how much data the site has.

Plain rounds carry exactly two records: ``arrays`` and ``metrics`` (``{"weight": 1.0}``).
Secure rounds (the aggregator runs Flower's SecAgg+ workflow) go through Flower's
``secaggplus_mod``, which quantizes and masks the update before it leaves; the head
arrives and the update leaves in Flower's legacy ``fitins``/``fitres`` records, which
is what that mod reads. :func:`secure_guard` runs before it: a site whose node config
sets ``secure-shares`` (it divided its noise by their square root) answers no plain
round and no round whose SecAgg+ parameters are insecure
(:func:`mmo_serving.federated.secure.site_refusal`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
)
from flwr.compat.common import recorddict_compat as compat

from mmo_serving.federated.secure import DROP_POINTS, site_refusal
from mmo_serving.federated.site import PARAM_NAMES, SiteConfig, local_round

app = ClientApp()


def _site(context: Context, round_config: dict[str, Any]) -> SiteConfig:
    return SiteConfig.from_configs(context.node_config, context.run_config, round_config)


def secure_guard(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Refuse what this site's secure-aggregation promise forbids; else SecAgg+ or plain."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = str(configs[Key.STAGE]) if configs is not None and Key.STAGE in configs else None
    cfg = _site(ctxt, {})
    state = ctxt.state.config_records.get(RECORD_KEY_STATE, {})
    why = site_refusal(cfg.secure_sites, stage, dict(configs or {}), dict(state))
    if why:
        raise PermissionError(f"site {cfg.partition_id} refuses the round: {why}")
    for drop in str(ctxt.node_config.get("drop-at", "")).split(","):
        rnd, _, when = drop.partition(":")
        if stage and rnd == msg.metadata.group_id and DROP_POINTS.get(when) == stage:
            # fault injection for the local federation
            raise ConnectionAbortedError(f"site {cfg.partition_id} dropped {when}")
    if stage is None:
        return call_next(msg, ctxt)
    return secaggplus_mod(msg, ctxt, call_next)


def _train_plain(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records["arrays"]
    round_config = dict(msg.content.config_records.get("config", {}))
    global_head = {name: arr.numpy() for name, arr in arrays.items()}
    result = local_round(
        _site(context, round_config), global_head, int(round_config.get("server-round", 0))
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in result.update.items()}),
            "metrics": MetricRecord({"weight": 1.0}),
        }
    )
    return Message(content=content, reply_to=msg)


def _train_secure(msg: Message, context: Context) -> Message:
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    round_config = dict(fitins.config)
    arrays = parameters_to_ndarrays(fitins.parameters)
    global_head = dict(zip(PARAM_NAMES, arrays, strict=True))
    result = local_round(
        _site(context, round_config), global_head, int(round_config.get("server-round", 0))
    )
    update = [np.asarray(result.update[k]) for k in PARAM_NAMES]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), 1, {})
    return Message(content=compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


@app.train(mods=[secure_guard])
def train(msg: Message, context: Context) -> Message:
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return _train_secure(msg, context)
    return _train_plain(msg, context)
