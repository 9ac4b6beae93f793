"""The aggregator's record of each federated round: outcome, sites in the aggregate and
whether aggregation was secure (pure; no Flower).

Each round appends one JSON line to ``OUT/rounds.jsonl`` and rewrites ``OUT/metrics.prom``
with ``mmo_federated_rounds_total{secure="true|false", outcome="aggregated|failed"}``
in the Prometheus text format. A failed round (a secure round that lost more sites than
the protocol tolerates, or that would average fewer than ``min-clients`` updates) is
recorded before the run stops with its reason: it is never averaged over fewer sites.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmo_serving.metrics import FEDERATED_ROUNDS

OUTCOMES = ("aggregated", "failed")


class RoundFailed(RuntimeError):
    """A round that must not produce an aggregate."""


@dataclass
class RoundLog:
    out_dir: Path | None
    secure: bool
    counts: Counter[str] = field(default_factory=Counter)

    def record(self, server_round: int, outcome: str, **details: Any) -> dict[str, Any]:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        self.counts[outcome] += 1
        entry = {"round": server_round, "outcome": outcome, "secure": self.secure, **details}
        if self.out_dir is not None:
            with open(self.out_dir / "rounds.jsonl", "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            tmp = self.out_dir / "metrics.prom.tmp"
            tmp.write_text(self.prometheus_text())
            tmp.replace(self.out_dir / "metrics.prom")
        return entry

    def prometheus_text(self) -> str:
        secure = "true" if self.secure else "false"
        lines = [
            f"# HELP {FEDERATED_ROUNDS} Federated rounds by outcome; secure: SecAgg+ aggregation.",
            f"# TYPE {FEDERATED_ROUNDS} counter",
            *(
                f'{FEDERATED_ROUNDS}{{secure="{secure}",outcome="{o}"}} {self.counts[o]}'
                for o in OUTCOMES
            ),
        ]
        return "\n".join(lines) + "\n"
