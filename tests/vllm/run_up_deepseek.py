"""Run by .venv-vllm's python (see conftest.run_script): ``mmo up FILE`` on a tiny
DeepSeek-V3 checkpoint directory (MLA attention, ``noaux_tc`` routing), driven with
run_up.py's helpers. Writes into WORK/result.json what transformers answers greedily, what
the endpoint answered (whole and streamed), and how far vLLM's CPU rotary kernel and
PyTorch's rotary land from each other on the query layout MLA hands them.

Usage: run_up_deepseek.py WORK
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import checkpoints as ck
import httpx
import run_up

MODEL = "tiny-deepseek-v3"
# run_up's helpers (the spec, the chat requests) name the model by its MODEL
run_up.MODEL = MODEL


def rotary_errors(tokens: int = 8, heads: int = 4) -> dict[str, float]:
    """vLLM's CPU rotary kernel and PyTorch's rotary (``forward_native``) on DeepSeek's
    layout -- the rope part of each head a view into a (tokens, heads, nope + rope) query --
    each against the kernel on a plain (tokens, heads * rope) query: the largest absolute
    difference of the rotated query."""
    import torch
    from vllm.config import CompilationConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    nope, rope_dim = 64, 64
    torch.manual_seed(0)
    q = torch.randn(tokens, heads, nope + rope_dim)
    k = torch.randn(tokens, 1, rope_dim)
    positions = torch.arange(tokens)
    config = VllmConfig(compilation_config=CompilationConfig(custom_ops=["all"]))
    with set_current_vllm_config(config):
        rope = get_rope(
            rope_dim,
            max_position=512,
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
            is_neox_style=False,  # DeepSeek's interleaved pairs
        )
        flat, _ = rope.forward_cpu(positions, q[..., nope:].reshape(tokens, -1), k.clone())
        flat = flat.reshape(tokens, heads, rope_dim)
        kernel, _ = rope.forward_cpu(positions, q.clone()[..., nope:], k.clone())
        native, _ = rope.forward_native(positions, q.clone()[..., nope:], k.clone())
    return {
        "kernel": float((kernel - flat).abs().max()),
        "native": float((native - flat).abs().max()),
    }


def main(work: Path) -> None:
    result: dict[str, Any] = {"prompts": run_up.PROMPTS, "rotary": rotary_errors()}
    checkpoint = ck.make_deepseek_v3(work / "deepseek-v3")
    result["expected"] = ck.greedy_answers(checkpoint, run_up.PROMPTS, run_up.MAX_TOKENS)
    spec = run_up.write_spec(work, checkpoint)

    port, metrics_port = run_up.free_port(), run_up.free_port()
    log = work / "mmo-up.log"
    cmd = [run_up._bin("mmo"), "up", str(spec), "--port", str(port), "--metrics-port",
           str(metrics_port), "--audit-file", str(work / "audit.jsonl")]  # fmt: skip
    t = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=work)
    try:
        run_up.wait_ready(proc, log)
        result["ready_s"] = time.perf_counter() - t
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            result["whole"] = [run_up.ask(client, p) for p in run_up.PROMPTS]
            # another tenant: its own cache scope, so the engine streams these answers
            headers = {"X-Tenant": "stream"}
            result["streamed"] = [run_up.ask_stream(client, p, headers) for p in run_up.PROMPTS]
    except BaseException:
        run_up.stop(proc)
        print(log.read_text(errors="replace")[-6000:])  # what mmo up said, for the test
        raise
    finally:
        result["exit_code"] = run_up.stop(proc)
        result["log"] = log.read_text(errors="replace")[-20000:]
        (work / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main(Path(sys.argv[1]))
