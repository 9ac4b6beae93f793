"""One site's round, without Flower: train the answer head locally, privatize the update.

:func:`local_round` is what the ClientApp does with a round's message. What it returns
for sending is *only* the privatized difference between the locally trained head and
the global head it received (same names, shapes and dtypes); samples, features, labels
and the local example count stay on the site. Each round appends one JSON line to the
site's own log (``log-dir``): the update's norm before clipping, the clipping factor, the
noise level and the names/shapes that were sent, so that an operator (and the tests) can
check the clipping bound without seeing any data. With ``keep-updates`` in the node
config the site also keeps each update it sent (``update-P-R.npz``, on the site).

The DP parameters are the site's: values in the node config (set by the operator from
``spec.isolation.federated.differentialPrivacy``) win over what the run asks for, and
the noise never drops below the run's value either, so an aggregator cannot switch the
noise off.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmo_serving.federated import data
from mmo_serving.federated.dp import global_norm, privatize

PARAM_NAMES = ("answer_head.weight", "answer_head.bias")


@dataclass(frozen=True)
class SiteConfig:
    partition_id: int
    num_partitions: int
    model_source: str = "builtin://shapes-moe"
    scenes: int = 120
    seed: int = 0
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    shares: int = 1
    local_epochs: int = 2
    lr: float = 0.01
    log_dir: str | None = None
    cache_dir: str | None = None
    keep_updates: bool = False  # also keep each sent update in log_dir (tests, audits)

    @property
    def secure_sites(self) -> int:
        """Sites every sum must hold when this site requires secure aggregation, else 0."""
        return self.shares if self.shares > 1 else 0

    @classmethod
    def from_configs(
        cls, node: Mapping[str, Any], run: Mapping[str, Any], round_config: Mapping[str, Any]
    ) -> SiteConfig:
        """Node config (the site's own) > round config (from the server) > run config."""

        def pick(key: str, default: Any) -> Any:
            for src in (node, round_config, run):
                if key in src and src[key] != "":
                    return src[key]
            return default

        missing = [k for k in ("partition-id", "num-partitions") if k not in node]
        if missing:
            raise ValueError(
                f"node config lacks {', '.join(missing)}: start the SuperNode with "
                "--node-config 'partition-id=N num-partitions=M'"
            )
        noise = float(pick("noise-multiplier", 1.0))
        # the server may raise the noise, never lower it below the site's own value
        noise = max(noise, float(round_config.get("noise-multiplier", noise)))
        clip = float(pick("clip-norm", 1.0))
        if "clip-norm" in round_config and "clip-norm" in node:
            clip = min(clip, float(round_config["clip-norm"]))
        return cls(
            partition_id=int(node["partition-id"]),
            num_partitions=int(node["num-partitions"]),
            model_source=str(pick("model-source", cls.model_source)),
            scenes=int(pick("scenes-per-site", cls.scenes)),
            seed=int(pick("seed", 0)),
            clip_norm=clip,
            noise_multiplier=noise,
            # lowering the noise per site is only sound under secure aggregation, which
            # the site itself must vouch for: never taken from the server
            shares=int(node.get("secure-shares", 1)),
            local_epochs=int(pick("local-epochs", cls.local_epochs)),
            lr=float(pick("lr", cls.lr)),
            log_dir=str(node["log-dir"]) if node.get("log-dir") else None,
            cache_dir=str(node["cache-dir"]) if node.get("cache-dir") else None,
            keep_updates=bool(node.get("keep-updates", False)),
        )


@dataclass(frozen=True)
class RoundResult:
    update: dict[str, np.ndarray]  # privatized, the only thing to send
    log: dict[str, Any]  # stays on the site


def _site_data(cfg: SiteConfig) -> tuple[np.ndarray, np.ndarray]:
    from mmo_serving.federated import head

    items = data.site_items(cfg.partition_id, cfg.num_partitions, cfg.scenes, seed=cfg.seed)
    model, tok = head.load_base(cfg.model_source)
    key = f"{cfg.model_source}|{_source_stamp(cfg.model_source)}"
    feats = head.cached_features(model, tok, items, cfg.cache_dir, key, seed=cfg.seed)
    return feats, np.array([it.label for it in items], dtype=np.int64)


def _source_stamp(source: str) -> str:
    """Changes when the checkpoint's weights change (the feature cache key)."""
    if source.startswith("random://"):
        return source
    from mmo_serving.model.checkpoint import WEIGHTS, resolve_source

    st = (resolve_source(source) / WEIGHTS).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def local_round(
    cfg: SiteConfig, global_head: Mapping[str, np.ndarray], server_round: int
) -> RoundResult:
    from mmo_serving.federated import head

    got = sorted(global_head)
    if got != sorted(PARAM_NAMES):
        raise ValueError(f"expected arrays {sorted(PARAM_NAMES)} from the server, got {got}")
    t0 = time.perf_counter()
    feats, labels = _site_data(cfg)
    start = {k: np.asarray(v, dtype=np.float32) for k, v in global_head.items()}
    tuned = head.train_head(
        start,
        feats,
        labels,
        epochs=cfg.local_epochs,
        lr=cfg.lr,
        seed=cfg.seed * 1000 + server_round,
    )
    delta = [tuned[k] - start[k] for k in PARAM_NAMES]
    rng = np.random.default_rng()  # fresh entropy: noise must not be reproducible
    priv = privatize(
        delta,
        clip_norm=cfg.clip_norm,
        noise_multiplier=cfg.noise_multiplier,
        rng=rng,
        shares=cfg.shares,
    )
    update = {k: a.astype(np.float32) for k, a in zip(PARAM_NAMES, priv.arrays, strict=True)}
    log = {
        "round": server_round,
        "partition": cfg.partition_id,
        "received_norm": global_norm(list(start.values())),
        "norm_before": priv.norm_before,
        "clipped_norm": priv.norm_before * priv.scale,
        "clip_norm": cfg.clip_norm,
        "scale": priv.scale,
        "noise_std": priv.noise_std,
        "noise_multiplier": cfg.noise_multiplier,
        "examples": len(labels),
        "local_accuracy_before": head.accuracy(start, feats, labels),
        "local_accuracy_after": head.accuracy(tuned, feats, labels),
        "sent": {k: [list(v.shape), str(v.dtype)] for k, v in update.items()},
        "secure_sites": cfg.secure_sites,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if cfg.log_dir:
        write_log(Path(cfg.log_dir), cfg.partition_id, log)
        if cfg.keep_updates:
            path = Path(cfg.log_dir) / f"update-{cfg.partition_id}-{server_round}.npz"
            np.savez(path, **dict[str, Any](update))
    return RoundResult(update, log)


def write_log(log_dir: Path, partition_id: int, entry: Mapping[str, Any]) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"site-{partition_id}.jsonl", "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
