"""`mmo plan` with observed loads: the plan follows the loads; bad loads are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmo_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEEPSEEK = str(ROOT / "manifests/samples/deepseek-v3-int4.yaml")


def _zipf_loads(layers: int, experts: int, s: float = 1.0) -> dict:
    row = [1000.0 / (rank + 1) ** s for rank in range(experts)]
    return {"layers": [row[i:] + row[:i] for i in range(layers)]}


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | str]:
    rc = main(["plan", "-o", "json", *argv])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out) if rc == 0 else captured.err


def test_skewed_loads_are_balanced_with_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loads = tmp_path / "loads.json"
    loads.write_text(json.dumps(_zipf_loads(58, 256)))
    rc, out = _plan(capsys, DEEPSEEK, "--loads", str(loads), "--redundant", "32")
    assert rc == 0
    assert isinstance(out, dict)
    plan = out["placement"]
    assert plan["redundantExperts"] == 32
    assert plan["slotsPerGpu"] == (256 + 32) // 8
    assert plan["balancedness"] <= 1.05
    hottest = plan["layers"][0]["replicas"][0]
    assert hottest > 1, "the hottest expert gets copies"


def test_wrong_number_of_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loads = tmp_path / "loads.json"
    loads.write_text(json.dumps(_zipf_loads(3, 256)))
    rc, err = _plan(capsys, DEEPSEEK, "--loads", str(loads))
    assert rc == 1
    assert "58" in err and "3" in err and "layer" in err


def test_negative_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _zipf_loads(58, 256)
    data["layers"][4][7] = -1
    loads = tmp_path / "loads.json"
    loads.write_text(json.dumps(data))
    rc, err = _plan(capsys, DEEPSEEK, "--loads", str(loads))
    assert rc == 1
    assert "layer 4" in err and "expert 7" in err


def test_more_copies_than_memory_allows(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _plan(capsys, DEEPSEEK, "--redundant", "800")
    assert rc == 1
    assert "redundantExperts=800 needs 132 expert slots per GPU" in err
    assert "at most 80 redundant copies fit" in err


def test_redundant_breaking_balanced_divisibility(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _plan(capsys, DEEPSEEK, "--redundant", "3")
    assert rc == 1
    assert "spec.experts.redundantExperts" in err
