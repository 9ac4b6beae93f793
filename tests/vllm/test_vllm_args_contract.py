"""The LLMConfig dicts of mmo_serving.vllm_args pass Ray Serve LLM's and vLLM's own checks.

Ray 2.60 and vLLM live in ``.venv-vllm`` (their pins clash with the main venv): the test
runs hack/check_llm_config.py with that venv's python (the ``vllm_venv`` fixture builds the
venv when missing).
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mmo_operator.builders.app_args import build_app_args
from mmo_operator.validation import validate
from mmo_serving.vllm_args import llm_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack/check_llm_config.py"


def _configs() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((ROOT / "manifests/samples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        args = build_app_args(validate(doc).model, None)
        if args.engine != "vllm":
            continue
        out[path.stem] = llm_config(args)
        out[f"{path.stem}-cpu"] = llm_config(args, accelerator="cpu")
        variant = copy.deepcopy(doc)
        variant["spec"]["experts"] = {"placement": "roundRobin"}
        variant["spec"].setdefault("serving", {})["vllm"] = {
            "tensorParallelSize": 2,
            "all2allBackend": "deepep_low_latency",
            "engineArgs": {"enforce_eager": True},
        }
        out[f"{path.stem}-tp2-round-robin"] = llm_config(
            build_app_args(validate(variant).model, None)
        )
    return out


def test_there_are_vllm_samples_to_check() -> None:
    assert len(_configs()) >= 6


def test_llm_configs_pass_ray_and_vllm_checks(vllm_venv: Path) -> None:
    result = subprocess.run(
        [str(vllm_venv / "bin/python"), str(SCRIPT)],
        input=json.dumps(_configs()),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_the_contract_check_catches_what_vllm_refuses(vllm_venv: Path) -> None:
    config = next(iter(_configs().values()))
    broken = copy.deepcopy(config)
    broken["engine_kwargs"]["max_num_seq"] = 8  # not an engine argument
    bad_eplb = copy.deepcopy(config)
    bad_eplb["engine_kwargs"]["eplb_config"]["window_size"] = 0
    result = subprocess.run(
        [str(vllm_venv / "bin/python"), str(SCRIPT)],
        input=json.dumps({"good": config, "broken": broken, "bad-eplb": bad_eplb}),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 1
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["good"] == "ok"
    assert "max_num_seq" in lines["broken"] and lines["broken"].startswith("FAILED")
    assert "window_size" in lines["bad-eplb"] and lines["bad-eplb"].startswith("FAILED")
