"""Run by .venv-vllm's python (see conftest.run_script): ``mmo up FILE`` on a spec whose
source is a tiny Qwen3-MoE checkpoint directory (``file:///...``), driven as a user
would: the real command in a subprocess, its banner awaited, then HTTP requests to the
endpoint and the metrics port. Writes into WORK/result.json what transformers answers
greedily, what the endpoint answered (whole, streamed, refused, cached), the audit
lines, the metric names and the timings.

Usage: run_up.py WORK
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import checkpoints as ck
import httpx

MODEL = "tiny-qwen3-moe"
MAX_TOKENS = 8  # the front's default token budget (AppArgs.max_new_tokens)
PROMPTS = (
    "Hello there, what is the answer?",
    "Name three colours.",
    "Why is the sky blue?",
    "Write one line about the sea.",
)
READY = "is serving"
START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 120

SPEC = """\
apiVersion: serving.mmo.dev/v1alpha1
kind: MultimodalModel
metadata:
  name: {name}
spec:
  model:
    source: file://{checkpoint}
    architecture: {architecture}
    modalities: [text]
    dtype: float32
  resources:
    gpuType: A100-80GB
    gpusPerNode: 1
  batching:
    maxBatchSize: 4
  cache:
    enabled: true
  isolation:
    mode: private
    audit:
      enabled: true
  serving:
    engine: vllm
    vllm:
      maxModelLen: 512
      engineArgs:
        enforce_eager: true
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def write_spec(work: Path, checkpoint: Path) -> Path:
    """The spec a user writes, its architecture block from ``mmo architecture DIR``."""
    arch = subprocess.run(
        [_bin("mmo"), "architecture", str(checkpoint), "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    architecture = json.loads(arch)
    architecture = architecture.get("architecture", architecture)
    spec = work / "tiny-qwen3-moe.yaml"
    spec.write_text(
        SPEC.format(
            name=MODEL, checkpoint=checkpoint.resolve(), architecture=json.dumps(architecture)
        )
    )
    return spec


def wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if READY in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"mmo up exited with {proc.returncode}")
        time.sleep(1)
    raise RuntimeError(f"mmo up not serving after {START_TIMEOUT_S}s")


def chat_body(prompt: str, *, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": stream,
    }


def ask(client: httpx.Client, prompt: str, headers: dict[str, str] | None = None) -> Any:
    r = client.post("/v1/chat/completions", json=chat_body(prompt, stream=False),
                    headers=headers or {})  # fmt: skip
    return {"status": r.status_code, "body": r.json(), "cache": r.headers.get("x-mmo-cache")}


def ask_stream(client: httpx.Client, prompt: str, headers: dict[str, str]) -> Any:
    """The SSE chunks as they arrive (their JSON payloads; ``[DONE]`` kept as is)."""
    chunks: list[Any] = []
    body = chat_body(prompt, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                data = line[len("data:") :].strip()
                chunks.append(data if data == "[DONE]" else json.loads(data))
        return {
            "status": r.status_code,
            "cache": r.headers.get("x-mmo-cache"),
            "content_type": r.headers.get("content-type"),
            "chunks": chunks,
        }


def metric_names(metrics_url: str, wanted: str, timeout_s: float = 60) -> list[str]:
    """The mmo_* series names on Ray's metrics port, once ``wanted`` is among them (Ray
    exports on an interval)."""
    deadline = time.monotonic() + timeout_s
    names: list[str] = []
    while time.monotonic() < deadline:
        try:
            text = httpx.get(metrics_url, timeout=10).text
        except httpx.HTTPError:
            text = ""
        names = sorted(
            {line.split("{")[0].split(" ")[0] for line in text.splitlines() if "mmo_" in line
             and not line.startswith("#")}
        )  # fmt: skip
        if any(wanted in n for n in names):
            break
        time.sleep(2)
    return names


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a user's Ctrl-C would; mmo up shuts Serve and Ray down itself."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def main(work: Path) -> None:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    checkpoint = ck.make_qwen3_moe(work / "qwen3-moe")
    expected = ck.greedy_answers(checkpoint, PROMPTS, MAX_TOKENS)
    spec = write_spec(work, checkpoint)
    timings["checkpoint_and_reference_s"] = time.perf_counter() - t

    port, metrics_port = _free_port(), _free_port()
    audit = work / "audit.jsonl"
    log = work / "mmo-up.log"
    cmd = [_bin("mmo"), "up", str(spec), "--port", str(port), "--metrics-port",
           str(metrics_port), "--audit-file", str(audit)]  # fmt: skip
    t = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=work)
    result: dict[str, Any] = {"prompts": PROMPTS, "expected": expected, "timings": timings}
    try:
        wait_ready(proc, log)
        timings["mmo_up_ready_s"] = time.perf_counter() - t
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            t = time.perf_counter()
            result["whole"] = [ask(client, p) for p in PROMPTS]
            timings["whole_answers_s"] = time.perf_counter() - t
            # another tenant: its own cache scope, so the engine streams these answers
            result["streamed"] = [ask_stream(client, p, {"X-Tenant": "stream"}) for p in PROMPTS]
            result["repeated"] = ask(client, PROMPTS[0])
            result["bad_header"] = ask(client, PROMPTS[0], {"X-Data-Class": "secret"})
            models = client.get("/v1/models")
            result["models"] = {"status": models.status_code, "body": models.json()}
        result["metrics"] = metric_names(
            f"http://127.0.0.1:{metrics_port}/metrics", "mmo_cache_hits"
        )
        result["audit"] = [
            json.loads(line) for line in audit.read_text().splitlines() if line.strip()
        ]
    except BaseException:
        stop(proc)
        print(log.read_text(errors="replace")[-6000:])  # what mmo up said, for the test
        raise
    finally:
        result["exit_code"] = stop(proc)
        result["log"] = log.read_text(errors="replace")[-20000:]
        (work / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main(Path(sys.argv[1]))
