"""Flower-free parts of federated mode: site data, site config, a local round, the
aggregator's checks, the Flower app file (the federation itself: tests/serving)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mmo_serving.federated import aggregate, data
from mmo_serving.federated.bundle import DEFAULT_RUN_CONFIG, write_app
from mmo_serving.federated.site import PARAM_NAMES, SiteConfig, local_round


def test_site_items_are_deterministic_disjoint_and_skewed() -> None:
    sites = [data.site_items(p, 3, 40) for p in range(3)]
    assert sites[0] == data.site_items(0, 3, 40)
    scenes = [{it.index for it in s} for s in sites]
    assert not (scenes[0] & scenes[1]) and not (scenes[1] & scenes[2])
    for p, items in enumerate(sites):
        own = data.site_kinds(p)
        share = sum(it.kind in own for it in items) / len(items)
        assert share > 0.8, (p, share)
    held = data.held_out_items(40)
    assert {it.kind for it in held} == {"colour", "shape", "count", "exists"}
    assert all(it.split == "test" for it in held)
    assert all(0 <= it.label < len(data.ANSWERS) for s in sites for it in s)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((3, 3, 10), "partition-id must be in 0..2"),
        ((0, 0, 10), "num-partitions must be >= 1"),
        ((0, 3, 0), "scenes must be >= 1"),
    ],
)
def test_site_items_errors(args: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data.site_items(*args)


def test_site_config_precedence_and_noise_floor() -> None:
    node = {"partition-id": 1, "num-partitions": 3, "noise-multiplier": 1.1, "clip-norm": 1.0}
    run = {"noise-multiplier": 0.5, "lr": 0.02, "model-source": "random://0"}
    # the server asks for less noise, a bigger clip and fewer shares: none of it applies
    cfg = SiteConfig.from_configs(
        node, run, {"noise-multiplier": 0.0, "clip-norm": 5.0, "secure-shares": 100}
    )
    assert (cfg.noise_multiplier, cfg.clip_norm, cfg.shares) == (1.1, 1.0, 1)
    assert (cfg.lr, cfg.model_source, cfg.partition_id) == (0.02, "random://0", 1)
    # ... but it may ask for more privacy
    cfg = SiteConfig.from_configs(node, run, {"noise-multiplier": 2.0, "clip-norm": 0.5})
    assert (cfg.noise_multiplier, cfg.clip_norm) == (2.0, 0.5)


def test_site_config_needs_partition() -> None:
    with pytest.raises(ValueError, match="node config lacks partition-id, num-partitions"):
        SiteConfig.from_configs({}, {}, {})


def test_local_round_sends_only_a_clipped_head_update(tmp_path: Path) -> None:
    cfg = SiteConfig(
        partition_id=0,
        num_partitions=3,
        model_source="random://0",
        scenes=8,
        clip_norm=0.01,
        noise_multiplier=0.0,
        log_dir=str(tmp_path / "logs"),
        cache_dir=str(tmp_path / "cache"),
    )
    start = {
        PARAM_NAMES[0]: np.zeros((len(data.ANSWERS), 128), np.float32),
        PARAM_NAMES[1]: np.zeros(len(data.ANSWERS), np.float32),
    }
    res = local_round(cfg, start, 1)
    assert {k: v.shape for k, v in res.update.items()} == {k: v.shape for k, v in start.items()}
    norm = float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in res.update.values())))
    assert res.log["norm_before"] > 0.01  # the bound was active ...
    assert norm == pytest.approx(0.01, rel=1e-5)  # ... and held (no noise here)
    logged = json.loads((tmp_path / "logs" / "site-0.jsonl").read_text())
    assert logged["clipped_norm"] <= 0.01 * (1 + 1e-9)
    assert list((tmp_path / "cache").glob("features-*.npy"))  # second round: no recompute
    noisy = local_round(SiteConfig(**{**cfg.__dict__, "noise_multiplier": 1.0}), start, 2)
    assert noisy.log["noise_std"] == pytest.approx(0.01)


def test_local_round_refuses_foreign_arrays() -> None:
    cfg = SiteConfig(partition_id=0, num_partitions=1, model_source="random://0", scenes=1)
    with pytest.raises(ValueError, match="expected arrays"):
        local_round(cfg, {"lm_head.weight": np.zeros(3)}, 1)


def test_aggregator_refuses_anything_but_a_head_update() -> None:
    head = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}
    exp = aggregate.shapes_of(head)
    assert aggregate.update_problem(head, exp) is None
    extra = {**head, "samples": np.zeros((4, 48, 48, 3), np.float32)}
    assert "expected exactly ['b', 'w']" in (aggregate.update_problem(extra, exp) or "")
    wrong = {**head, "w": np.zeros((3, 3), np.float32)}
    assert "w: shape/dtype ((3, 3), 'float32'), expected ((2, 3), 'float32')" in (
        aggregate.update_problem(wrong, exp) or ""
    )
    bad = {**head, "b": np.array([np.nan, 0], np.float32)}
    assert "non-finite" in (aggregate.update_problem(bad, exp) or "")
    assert "unexpected or missing content ['labels']" in (
        aggregate.update_problem(head, exp, ["labels"]) or ""
    )


def test_mean_update_adds_the_equal_weight_mean() -> None:
    g = {"w": np.ones(2, np.float32)}
    new = aggregate.mean_update(g, [{"w": np.array([1.0, 0.0])}, {"w": np.array([3.0, 2.0])}])
    assert new["w"].tolist() == [3.0, 2.0] and new["w"].dtype == np.float32
    with pytest.raises(ValueError, match="no accepted update"):
        aggregate.mean_update(g, [])


def test_written_app_names_our_components(tmp_path: Path) -> None:
    path = write_app(tmp_path, {"num-rounds": 5}) / "pyproject.toml"
    doc = tomllib.loads(path.read_text())
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "mmo_serving.federated.server:app",
        "clientapp": "mmo_serving.federated.client:app",
    }
    assert app["config"]["num-rounds"] == 5
    assert set(app["config"]) == set(DEFAULT_RUN_CONFIG)
    with pytest.raises(ValueError, match=r"unknown run config keys \['rounds'\]"):
        write_app(tmp_path, {"rounds": 5})


def test_cli_rejects_unknown_config() -> None:
    from mmo_serving.federated.__main__ import main

    with pytest.raises(SystemExit, match="bad -c 'round=3'"):
        main(["app", "/tmp/x", "-c", "round=3"])
    with pytest.raises(SystemExit, match="num-rounds takes a int"):
        main(["app", "/tmp/x", "-c", "num-rounds=three"])


def test_apply_head_writes_the_answer_rows() -> None:
    import torch

    from mmo_serving.federated import head

    model, tok = head.load_base("random://0")
    before = head.initial_head(model, tok, "checkpoint")
    ids = head.answer_ids(tok)
    assert np.allclose(before[head.WEIGHT], model.lm_head.weight.detach()[ids].numpy())
    zeros = head.initial_head(model, tok, "zeros")
    other = model.lm_head.weight.detach().clone()
    head.apply_head(model, tok, zeros)
    assert torch.count_nonzero(model.lm_head.weight[ids]) == 0
    mask = torch.ones(len(other), dtype=torch.bool)
    mask[ids] = False
    assert torch.equal(model.lm_head.weight[mask], other[mask])
    with pytest.raises(ValueError, match="head-init must be one of checkpoint, zeros"):
        head.initial_head(model, tok, "random")


def test_cli_parses_booleans_and_dropouts() -> None:
    from mmo_serving.federated.__main__ import _parse_kv, main

    assert _parse_kv(["secure-aggregation=true", "keep-received=False"]) == {
        "secure-aggregation": True,
        "keep-received": False,
    }
    with pytest.raises(SystemExit, match="secure-aggregation takes true or false"):
        _parse_kv(["secure-aggregation=yes"])
    with pytest.raises(
        SystemExit,
        match=r"bad --drop .4:1:before-unmask.: expected SITE:ROUND:WHEN with SITE < --sites",
    ):
        main(["local", "/tmp/x", "--sites", "4", "--drop", "4:1:before-unmask"])
    with pytest.raises(SystemExit, match="WHEN one of before-masking, before-unmask"):
        main(["local", "/tmp/x", "--sites", "4", "--drop", "1:1:later"])


def test_secure_local_federation_sites_vouch_for_min_clients() -> None:
    from mmo_serving.federated.loopback import secure_node_config

    assert secure_node_config({}) == {}
    assert secure_node_config({"secure-aggregation": True, "min-clients": 5}) == {
        "secure-shares": 5
    }


def test_site_config_secure_sites_and_kept_updates(tmp_path: Path) -> None:
    node = {"partition-id": 0, "num-partitions": 4, "secure-shares": 4, "keep-updates": True}
    cfg = SiteConfig.from_configs(node, {}, {})
    assert (cfg.secure_sites, cfg.keep_updates, cfg.shares) == (4, True, 4)
    assert (
        SiteConfig.from_configs({"partition-id": 0, "num-partitions": 1}, {}, {}).secure_sites == 0
    )
    cfg = SiteConfig(
        partition_id=0,
        num_partitions=4,
        model_source="random://0",
        scenes=2,
        clip_norm=0.5,
        noise_multiplier=1.0,
        shares=4,
        log_dir=str(tmp_path),
        keep_updates=True,
    )
    start = {
        PARAM_NAMES[0]: np.zeros((len(data.ANSWERS), 128), np.float32),
        PARAM_NAMES[1]: np.zeros(len(data.ANSWERS), np.float32),
    }
    res = local_round(cfg, start, 3)
    assert res.log["noise_std"] == pytest.approx(0.25)  # 1.0 x 0.5 / sqrt(4)
    with np.load(tmp_path / "update-0-3.npz") as z:
        assert all(np.array_equal(z[k], res.update[k]) for k in PARAM_NAMES)
