"""Secure aggregation without Flower: parameters from the spec, their checks, what a site
refuses, admission, the round record (the protocol itself: tests/serving)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.api.parse import parse_model
from mmo_operator.policy.admission import check_isolation
from mmo_serving.federated.rounds import RoundLog
from mmo_serving.federated.secure import (
    MODULUS_RANGE,
    SecAggParams,
    derive,
    problems,
    site_noise_std,
    site_refusal,
)

ROOT = Path(__file__).resolve().parents[2]


def test_derived_parameters_for_small_federations() -> None:
    p = derive(4, 1.0, 1.0)
    assert (p.num_shares, p.reconstruction_threshold, p.dropouts_tolerated) == (4, 3, 1)
    assert p.clipping_range == pytest.approx(1.0 + 6 * 0.5)  # clip + 6 sigma of a site
    assert p.quantization_range == 2**22 and p.modulus_range == MODULUS_RANGE
    assert p.max_weight == 1.0
    assert p.quantization_error == pytest.approx(8.0 / 2**22)
    assert (derive(6, 1.0, 1.0).num_shares, derive(6, 1.0, 1.0).reconstruction_threshold) == (6, 4)
    assert derive(15, 1.0, 1.0).num_shares == 15


def test_large_federations_use_a_sparse_odd_graph_and_never_overflow() -> None:
    p = derive(10000, 1.0, 1.0)
    assert p.num_shares == 41 and p.num_shares % 2 == 1  # ceil(3 log2 10000) = 40 -> odd
    assert p.reconstruction_threshold == 28
    assert 10000 * p.quantization_range < MODULUS_RANGE
    assert p.quantization_range == 2**18
    for n in (4, 5, 7, 15, 16, 17, 100, 1023, 1024, 5000, 10000):
        p = derive(n, 0.5, 1.1)
        assert problems(p) == [], (n, problems(p))
        assert 2 * p.reconstruction_threshold > p.num_shares >= 3
        assert p.reconstruction_threshold >= 3 and p.dropouts_tolerated >= 1


def test_distributed_noise_sums_to_the_full_noise() -> None:
    assert site_noise_std(0.5, 1.0, 4) == pytest.approx(0.25)
    assert (4 * site_noise_std(0.5, 1.0, 4) ** 2) ** 0.5 == pytest.approx(0.5)


OK = SecAggParams(sites=6, num_shares=6, reconstruction_threshold=4, clipping_range=2.0,
                  quantization_range=2**22)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sites": 3, "num_shares": 3, "reconstruction_threshold": 2}, ["needs at least 4"]),
        ({"num_shares": 7, "reconstruction_threshold": 5}, ["7 shares but only 6 sites"]),
        ({"reconstruction_threshold": 2}, ["threshold 2", "colluding pair"]),
        ({"reconstruction_threshold": 3}, ["not above half of the 6 shares", "dropout lists"]),
        ({"reconstruction_threshold": 6}, ["must be below the shares", "no site may ever drop"]),
        ({"quantization_range": 2**30}, ["6 sites x quantization range", "wrap around"]),
        ({"quantization_range": 2**10}, ["rounding error would rival"]),
        ({"modulus_range": 3 * 2**20}, ["power of two"]),
        ({"clipping_range": 0.0}, ["clipping range 0.0: must be > 0"]),
        ({"max_weight": 1000.0}, ["max weight 1000.0", "must be 1"]),
    ],
)
def test_insecure_or_impossible_parameters_are_refused(
    change: dict[str, Any], words: list[str]
) -> None:
    assert problems(OK) == []
    found = "; ".join(problems(dataclasses.replace(OK, **change)))
    for w in words:
        assert w in found, found


def _setup(p: SecAggParams) -> dict[str, Any]:
    return {
        "sample_num": p.sites,
        "share_num": p.num_shares,
        "threshold": p.reconstruction_threshold,
        "clipping_range": p.clipping_range,
        "target_range": p.quantization_range,
        "mod_range": p.modulus_range,
        "max_weight": p.max_weight,
    }


def test_what_a_secure_site_refuses() -> None:
    good = derive(4, 1.0, 1.0)
    state = {"sample_num": 4, "share_num": 4}
    # a site without secure-shares answers anything
    assert site_refusal(0, None, {}, {}) is None
    # a secure site never sends a plain update
    assert "asked for a plain, unmasked update" in (site_refusal(4, None, {}, {}) or "")
    assert site_refusal(4, "setup", _setup(good), {}) is None
    assert site_refusal(4, "setup", _setup(derive(5, 1.0, 1.0)), {}) is None
    few = site_refusal(5, "setup", _setup(good), {}) or ""
    assert "samples 4 sites, fewer than the 5" in few
    weak = site_refusal(
        4, "setup", _setup(dataclasses.replace(good, reconstruction_threshold=2)), {}
    )
    assert "insecure SecAgg+ parameters" in (weak or "") and "colluding pair" in (weak or "")
    # unmasking a sum of fewer updates than the noise assumes
    assert site_refusal(4, "unmask", {"active_nids": [1, 2, 3, 4]}, state) is None
    short = site_refusal(4, "unmask", {"active_nids": [1, 2, 3]}, state) or ""
    assert "only 3 sites' masked updates are in the sum" in short
    assert site_refusal(4, "share_keys", {}, state) is None


def _federated(**fed: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests/samples/federated-vqa.yaml").read_text()
    )
    doc = copy.deepcopy(doc)
    doc["spec"]["isolation"]["federated"].update(fed)
    return doc


def test_admission_accepts_secure_aggregation_with_four_sites() -> None:
    assert check_isolation(parse_model(_federated(secureAggregation=True, minClients=4))) == []


def test_admission_refuses_secure_aggregation_with_three_sites() -> None:
    found = check_isolation(parse_model(_federated(secureAggregation=True, minClients=3)))
    assert [p.path for p in found] == ["spec.isolation.federated.secureAggregation"]
    assert "with minClients 3: 3 sites per round; secure aggregation needs at least 4" in (
        found[0].message
    )


def test_mmo_validate_accepts_a_secure_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmo_operator.cli import main

    path = tmp_path / "secure.yaml"
    path.write_text(yaml.safe_dump(_federated(secureAggregation=True, minClients=5)))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_round_log_counts_outcomes_in_prometheus_text(tmp_path: Path) -> None:
    log = RoundLog(tmp_path, secure=True)
    log.record(1, "aggregated", sites=4)
    log.record(2, "failed", reason="halted")
    text = (tmp_path / "metrics.prom").read_text()
    assert "# TYPE mmo_federated_rounds_total counter" in text
    assert 'mmo_federated_rounds_total{secure="true",outcome="aggregated"} 1' in text
    assert 'mmo_federated_rounds_total{secure="true",outcome="failed"} 1' in text
    lines = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert lines[1] == {"round": 2, "outcome": "failed", "secure": True, "reason": "halted"}
    assert 'secure="false"' in RoundLog(None, secure=False).prometheus_text()
    with pytest.raises(ValueError, match="outcome must be one of"):
        log.record(3, "skipped")
