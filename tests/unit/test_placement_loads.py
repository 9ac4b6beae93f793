"""The loads file of ``mmo plan --loads``: parsing, the uniform default, precise errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mmo_operator.planning.loads import read_loads, uniform_loads


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "loads.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_a_file_and_ignores_other_keys(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"window": "5m", "layers": [[1, 2.5, 0], [3, 0, 0]]}))
    assert read_loads(path, num_layers=2, num_experts=3) == [[1.0, 2.5, 0.0], [3.0, 0.0, 0.0]]
    assert read_loads(str(path), num_layers=2, num_experts=3)[0] == [1.0, 2.5, 0.0]


def test_objects_and_bare_layer_lists_are_accepted() -> None:
    assert read_loads({"layers": [[1, 2]]}, num_layers=1, num_experts=2) == [[1.0, 2.0]]
    assert read_loads([[1, 2]], num_layers=1, num_experts=2) == [[1.0, 2.0]]


def test_the_expert_load_endpoint_json_is_accepted() -> None:
    """GET /v1/expert-load: tokens[layer][expert][rank] since start, summed over ranks."""
    doc = {
        "numLayers": 2,
        "numExperts": 2,
        "numRanks": 2,
        "planVersion": 1,
        "tokens": [[[3, 4], [0, 1]], [[5, 0], [2, 2]]],
        "window": [[[0, 0], [0, 0]], [[0, 0], [0, 0]]],
        "balancedness": [1.0, 1.0],
        "model": "m",
        "placement": None,
    }
    assert read_loads(doc, num_layers=2, num_experts=2) == [[7.0, 1.0], [5.0, 4.0]]


def test_no_loads_means_uniform() -> None:
    assert read_loads(None, num_layers=2, num_experts=3) == [[1.0] * 3, [1.0] * 3]
    assert uniform_loads(1, 2) == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="num_layers >= 1 and num_experts >= 1, got 0 and 4"):
        uniform_loads(0, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{",
            "is not JSON: Expecting property name enclosed in double quotes at line 1 "
            'column 2; expected {"layers": [[tokens per expert, ...], ...]}',
        ),
        ("[[1, 2]]", ': missing "layers" or "tokens" (got list); expected {"layers"'),
        ('{"experts": []}', ': missing "layers" or "tokens" (got an object without them)'),
        ('{"tokens": {"0": 1}}', ': "tokens" is dict, expected a [layer][expert][rank] list'),
        ('{"tokens": [[[1], [2]], 3]}', ": tokens[1] is int, expected a [layer][expert][rank]"),
        (
            '{"tokens": [[[1], []], [[1], [2]]]}',
            ": tokens[0][1] is [], expected the token counts of each rank",
        ),
        (
            '{"tokens": [[[1, 2], [3, -1]], [[1], [2]]]}',
            ": tokens[0][1][1] is -1: loads must be finite and >= 0",
        ),
        ('{"tokens": [[[1], [2]]]}', ": 1 layers, but the model has 2 MoE layers"),
        ('{"tokens": [[[1], [2], [3]], [[1], [2], [3]]]}', ": layer 0 has 3 experts, but"),
        ('{"layers": {"0": [1, 2]}}', ': "layers" is dict, expected a list of lists'),
        ('{"layers": [[1, 2]]}', ": 1 layers, but the model has 2 MoE layers"),
        ('{"layers": [[1, 2], 7]}', ": layer 1 is int, expected a list of 2 numbers"),
        ('{"layers": [[1, 2], [1, 2, 3]]}', ": layer 1 has 3 experts, but the model has 2"),
        (
            '{"layers": [[1, 2], [1, -4]]}',
            ": layer 1 expert 1 is -4: loads must be finite and >= 0",
        ),
        (
            '{"layers": [[1, 2], [NaN, 1]]}',
            ": layer 1 expert 0 is nan: loads must be finite and >= 0",
        ),
        (
            '{"layers": [[1, Infinity], [1, 1]]}',
            ": layer 0 expert 1 is inf: loads must be finite and >= 0",
        ),
        ('{"layers": [[1, "2"], [1, 1]]}', ": layer 0 expert 1 is '2': loads must be numbers"),
        ('{"layers": [[1, null], [1, 1]]}', ": layer 0 expert 1 is None: loads must be numbers"),
        ('{"layers": [[1, true], [1, 1]]}', ": layer 0 expert 1 is True: loads must be numbers"),
    ],
)
def test_bad_files_name_file_layer_and_expert(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        read_loads(path, num_layers=2, num_experts=2)
    assert str(err.value).startswith(f"loads file {str(path)!r}")
    assert message in str(err.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=re.escape(f"loads file {str(missing)!r}: no such file")):
        read_loads(missing, num_layers=1, num_experts=1)
    with pytest.raises(ValueError, match="cannot read it"):
        read_loads(tmp_path, num_layers=1, num_experts=1)  # a directory
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="cannot read it"):
        read_loads(binary, num_layers=1, num_experts=1)


def test_objects_get_the_same_checks() -> None:
    with pytest.raises(ValueError, match=r"^loads: layer 0 has 1 experts, but the model has 2$"):
        read_loads({"layers": [[1]]}, num_layers=1, num_experts=2)
    with pytest.raises(ValueError, match=r"^loads must be a file path, an object or a list"):
        read_loads(42, num_layers=1, num_experts=2)  # type: ignore[arg-type]
