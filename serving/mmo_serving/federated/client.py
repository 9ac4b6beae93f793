"""The Flower ClientApp of a site (needs ``flwr``: the ``federated`` extra, own venv).

On each ``train`` message it takes the global answer head from the message's
``arrays`` record, runs :func:`mmo_serving.federated.site.local_round` on the site's
local data and replies with exactly two records: ``arrays`` (the clipped, noised update,
same names and shapes as the head) and ``metrics`` (``{"weight": 1.0}``: every site
counts the same, so the reply does not even reveal how much data the site has).
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mmo_serving.federated.site import SiteConfig, local_round

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records["arrays"]
    round_config = dict(msg.content.config_records.get("config", {}))
    cfg = SiteConfig.from_configs(context.node_config, context.run_config, round_config)
    global_head = {name: arr.numpy() for name, arr in arrays.items()}
    result = local_round(cfg, global_head, int(round_config.get("server-round", 0)))
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in result.update.items()}),
            "metrics": MetricRecord({"weight": 1.0}),
        }
    )
    return Message(content=content, reply_to=msg)
