"""Run by .venv-vllm's python (see conftest.run_script): build the tiny checkpoints into
WORK, load each with transformers, decode greedily, and write what the test checks into
WORK/result.json."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import checkpoints as ck
import run_up

PROMPTS = ("Hello there, what is the answer?", "Name three colours.")
MAX_NEW = 8


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _text_model(directory: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    answers = []
    for prompt in PROMPTS:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        out = model.generate(**enc, max_new_tokens=MAX_NEW, do_sample=False)
        answers.append(out[0, enc["input_ids"].shape[1] :].tolist())
    return {
        "class": type(model).__name__,
        "config": json.loads((directory / "config.json").read_text()),
        "files": sorted(p.name for p in directory.iterdir()),
        "vocab": len(tok),
        "answers": answers,
    }


def _vl_model(directory: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[0]}]}
    ]
    answers = []
    for seed in (0, 1):
        pixels = np.random.default_rng(seed).random((64, 96, 3)) * 255
        inputs = ck.vl_inputs(directory, messages, [Image.fromarray(pixels.astype("uint8"))])
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        answers.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    return {
        "class": type(model).__name__,
        "config": json.loads((directory / "config.json").read_text()),
        "files": sorted(p.name for p in directory.iterdir()),
        "answers": answers,
    }


def _vl_in_vllm(directory: Path, work: Path) -> dict[str, Any]:
    """Where the multimodal checkpoint stops with vLLM's CPU build: importing vLLM's model
    module, and ``mmo up`` on a spec with images (refused before Ray starts)."""
    try:
        importlib.import_module("vllm.model_executor.models.qwen3_vl_moe")
        imported = "ok"
    except ImportError as exc:
        imported = f"{type(exc).__name__}: {exc}"
    spec = run_up.write_spec(work, directory).read_text()
    spec = spec.replace("modalities: [text]", "modalities: [text, image]")
    spec = spec.replace(f"name: {run_up.MODEL}", "name: tiny-qwen3-vl-moe")
    (work / "tiny-qwen3-vl-moe.yaml").write_text(spec)
    mmo = str(Path(sys.executable).parent / "mmo")
    up = subprocess.run(
        [
            *(mmo, "up", str(work / "tiny-qwen3-vl-moe.yaml")),
            *("--port", str(run_up.free_port()), "--metrics-port", str(run_up.free_port())),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return {"vllm_module": imported, "up_exit": up.returncode, "up_err": up.stderr}


def main(work: Path) -> None:
    result = {
        "qwen3_moe": _text_model(ck.make_qwen3_moe(work / "qwen3-moe")),
        "deepseek_v3": _text_model(ck.make_deepseek_v3(work / "deepseek-v3")),
        "qwen3_vl_moe": _vl_model(ck.make_qwen3_vl_moe(work / "qwen3-vl-moe")),
    }
    result["qwen3_vl_moe_in_vllm"] = _vl_in_vllm(work / "qwen3-vl-moe", work)
    again = ck.make_qwen3_moe(work / "qwen3-moe-again")
    result["same_seed_same_weights"] = _sha(again / "model.safetensors") == _sha(
        work / "qwen3-moe" / "model.safetensors"
    )
    (work / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
