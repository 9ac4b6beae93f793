"""`mmo plan` with observed loads: the plan follows the loads; bad loads are refused."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
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
    rc, out = _plan(capsys, DEEPSEEK, "--loads", str(loads), "--redundant", "16")
    assert rc == 0
    assert isinstance(out, dict)
    plan = out["placement"]
    assert plan["redundantExperts"] == 16
    assert plan["slotsPerGpu"] == (256 + 16) // 8
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
    assert "at most 24 redundant copies fit" in err


def test_redundant_breaking_balanced_divisibility(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _plan(capsys, DEEPSEEK, "--redundant", "3")
    assert rc == 1
    assert "spec.experts.redundantExperts" in err


# --- --current: low churn from the plan in force ------------------------------------------

PRIVATE = str(ROOT / "manifests/samples/private-vqa.yaml")  # 8 experts, 8 GPUs, 8 copies, 4 layers


def _drifted(loads: dict, fraction: float = 0.2, seed: int = 1) -> dict:
    """The same loads with a fraction of the experts of every layer reshuffled."""
    rng = random.Random(seed)
    out = []
    for row in loads["layers"]:
        row = list(row)
        idx = rng.sample(range(len(row)), int(len(row) * fraction))
        values = [row[i] for i in idx]
        rng.shuffle(values)
        for i, v in zip(idx, values, strict=True):
            row[i] = v
        out.append(row)
    return {"layers": out}


def _current(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> Path:
    """The placement `mmo plan -o json` prints for ``argv``, saved as a file."""
    rc, out = _plan(capsys, *argv)
    assert rc == 0 and isinstance(out, dict)
    path = tmp_path / "current.json"
    path.write_text(json.dumps(out["placement"]))
    return path


def _write(tmp_path: Path, name: str, data: object) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_current_plan_is_re_planned_with_few_moves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _zipf_loads(58, 256)
    loads = _write(tmp_path, "first.json", first)
    current = _current(tmp_path, capsys, DEEPSEEK, "--loads", loads, "--redundant", "16")
    second = _write(tmp_path, "second.json", _drifted(first))
    rc, out = _plan(
        capsys, DEEPSEEK, "--redundant", "16", "--loads", second, "--current", str(current)
    )
    assert rc == 0 and isinstance(out, dict)
    churn, plan = out["churn"], out["placement"]
    scratch = churn["fromScratch"]
    assert churn["movedPerLayer"] == [layer["moved"] for layer in plan["layers"]]
    assert churn["moved"] == sum(churn["movedPerLayer"])
    assert len(scratch["movedPerLayer"]) == 58
    assert churn["balancednessBefore"] > scratch["balancedness"] + 0.1  # the drift unbalanced
    assert churn["balancedness"] <= scratch["balancedness"] + 0.03
    assert 0 < churn["moved"] <= scratch["moved"] / 3
    assert all(
        m <= s for m, s in zip(churn["movedPerLayer"], scratch["movedPerLayer"], strict=True)
    )


def test_current_plan_text_output_shows_moves_per_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = _current(tmp_path, capsys, PRIVATE)
    skewed = _write(tmp_path, "skewed.json", _zipf_loads(4, 8))
    assert main(["plan", PRIVATE, "--loads", skewed, "--current", str(current)]) == 0
    out = capsys.readouterr().out
    summary = re.search(
        r"moved (\d+) experts, balancedness [\d.]+ -> [\d.]+ \(from scratch: moved (\d+), ", out
    )
    assert summary, out
    layers = re.findall(r"layer (\d): balancedness [\d.]+, moved (\d+) \(from scratch (\d+)\)", out)
    assert [int(layer) for layer, _, _ in layers] == [0, 1, 2, 3]
    assert sum(int(m) for _, m, _ in layers) == int(summary.group(1))
    assert sum(int(s) for _, _, s in layers) == int(summary.group(2))


def test_current_plan_from_a_configmap_or_the_whole_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmo_operator.builders.configmap import build_placement_configmap
    from mmo_operator.validation import validate_file
    from mmo_serving.config import PlacementPlan

    current = _current(tmp_path, capsys, PRIVATE)
    skewed = _write(tmp_path, "skewed.json", _zipf_loads(4, 8))
    rc, expected = _plan(capsys, PRIVATE, "--loads", skewed, "--current", str(current))
    assert rc == 0
    plan = PlacementPlan.model_validate_json(current.read_text())
    configmap = build_placement_configmap(validate_file(PRIVATE).model, plan)
    whole = {"name": "private-vqa", "placement": json.loads(current.read_text())}
    for name, data in (("cm.json", configmap), ("whole.json", whole)):
        path = _write(tmp_path, name, data)
        assert _plan(capsys, PRIVATE, "--loads", skewed, "--current", path) == (0, expected)


def test_max_moves_caps_the_moves_per_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = _current(tmp_path, capsys, PRIVATE)
    skewed = _write(tmp_path, "skewed.json", _zipf_loads(4, 8))
    rc, out = _plan(
        capsys, PRIVATE, "--loads", skewed, "--current", str(current), "--max-moves", "1"
    )
    assert rc == 0 and isinstance(out, dict)
    assert max(out["churn"]["movedPerLayer"]) <= 1
    assert max(out["churn"]["fromScratch"]["movedPerLayer"]) > 1


def test_max_moves_needs_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", PRIVATE, "--max-moves", "3"]) == 2
    assert "--max-moves needs --current PLAN.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", PRIVATE, "--current", "x.json", "--max-moves", "-1"])
    assert "expected an integer >= 0, got '-1'" in capsys.readouterr().err


def _other_shape(**change: int) -> dict:
    """A valid plan of private-vqa's shape (8 experts, 8 GPUs, 8 copies, 4 layers) but
    for ``change``."""
    from mmo_operator.planning.placement import plan_placement

    shape = {"layers": 4, "experts": 8, "gpus": 8, "redundant": 8, **change}
    plan = plan_placement(
        [[1.0] * shape["experts"]] * shape["layers"],
        num_gpus=shape["gpus"],
        redundant_experts=shape["redundant"],
    )
    return plan.model_dump(mode="json", by_alias=True)


@pytest.mark.parametrize(
    ("current", "message"),
    [
        (
            _other_shape(experts=16, redundant=0),
            "it has 16 experts per layer where the spec has 8 (numExperts)",
        ),
        (
            _other_shape(gpus=4, redundant=0),
            "it has 4 GPUs where the spec has 8 (gpusPerNode x nodesPerReplica)",
        ),
        (
            _other_shape(redundant=0),
            "it has 1 expert slots per GPU (redundantExperts 0) where the spec has 2 "
            "(8 experts + 8 redundant over 8 GPUs)",
        ),
        (_other_shape(layers=3), "it has 3 MoE layers where the spec has 4 (numMoeLayers)"),
        ("{not json", "is not JSON: Expecting property name enclosed in double quotes at line 1"),
        (
            {"kind": "ConfigMap", "data": {"other.json": "{}"}},
            'is a ConfigMap without data["placement.json"] (its keys: other.json)',
        ),
        (
            {"kind": "ConfigMap", "data": {"placement.json": "[1,"}},
            'data["placement.json"] is not JSON',
        ),
        (_zipf_loads(4, 8), "is not a placement plan (strategy: Field required;"),
        ({"name": "m", "placement": None}, "without a placement (the model did not fit)"),
    ],
    ids=[
        "experts",
        "gpus",
        "slots",
        "layers",
        "not-json",
        "configmap-without-key",
        "configmap-bad-json",
        "not-a-plan",
        "no-placement",
    ],
)
def test_bad_current_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], current: object, message: str
) -> None:
    path = _write(tmp_path, "current.json", current)
    rc, err = _plan(capsys, PRIVATE, "--current", path)
    assert rc == 1
    assert isinstance(err, str)
    assert err.startswith(f"{PRIVATE}: current plan '{path}' ")
    assert message in err
    if "does not match" in err:
        assert "give the plan `mmo plan -o json` printed for this spec" in err
    elif "without a placement" not in err and "ConfigMap without" not in err:
        assert 'expected the "placement" object of `mmo plan -o json`' in err


def test_missing_current_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nope.json")
    rc, err = _plan(capsys, PRIVATE, "--current", path)
    assert rc == 1
    assert f"current plan '{path}': no such file" in err


# --- errors in -o json, and closed pipes --------------------------------------------------


def test_invalid_file_prints_a_json_result(capsys: pytest.CaptureFixture[str]) -> None:
    bad = str(Path(__file__).parent / "invalid" / "replicas.yaml")
    assert main(["plan", "-o", "json", bad]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "file": bad,
        "valid": False,
        "problems": [
            {
                "path": "spec.autoscaling.maxReplicas",
                "message": "maxReplicas must be greater than or equal to minReplicas",
            }
        ],
    }


def test_builtin_divisibility_error_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _plan(capsys, PRIVATE, "--redundant", "3")
    assert rc == 1
    assert err.startswith(f"{PRIVATE}: spec.experts.redundantExperts: with balanced placement")
    assert err.rstrip().endswith("use redundantExperts 0 or 8")


def test_closed_pipe_ends_quietly() -> None:
    """`mmo plan -o json ... | head -1`: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmo_operator.cli", "plan", "-o", "json", DEEPSEEK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # the plan is far larger than a pipe's buffer: the next write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


SAMPLE_LOADS = ROOT / "manifests/samples/private-vqa-expert-load.json"


def test_the_expert_load_endpoint_json_plans_hot_experts_with_copies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shipped sample is what GET /v1/expert-load returned for private-vqa: saved
    live load re-plans as it is, summed over ranks."""
    doc = json.loads(SAMPLE_LOADS.read_text())
    assert {"numLayers", "numExperts", "numRanks", "tokens", "window"} <= set(doc)
    sample = str(ROOT / "manifests/samples/private-vqa.yaml")
    rc, out = _plan(capsys, sample, "--loads", str(SAMPLE_LOADS))
    assert rc == 0 and isinstance(out, dict)
    per_expert = [[sum(ranks) for ranks in layer] for layer in doc["tokens"]]
    for layer, loads in zip(out["placement"]["layers"], per_expert, strict=True):
        hottest = loads.index(max(loads))
        coldest = loads.index(min(loads))
        assert layer["replicas"][hottest] > layer["replicas"][coldest], layer["layer"]
    rc, uniform = _plan(capsys, sample)
    assert isinstance(uniform, dict)
    assert out["placement"]["layers"] != uniform["placement"]["layers"]


def test_capacity_keys_are_camel_case_like_the_placement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out = _plan(capsys, DEEPSEEK)
    assert rc == 0 and isinstance(out, dict)
    for part in ("capacity", "placement"):
        assert all(re.fullmatch(r"[a-z]+([A-Z][a-z0-9]*)*", k) for k in out[part]), out[part]
    assert out["capacity"]["slotsNeededPerGpu"] == out["placement"]["slotsPerGpu"]
    assert out["capacity"]["gpuMemoryBytes"] == 80 * 10**9
