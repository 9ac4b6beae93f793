"""Run by .venv-vllm's python (see conftest.run_script): ``mmo up FILE`` on a spec whose
source is a tiny Qwen3-MoE checkpoint directory (``file:///...``), driven as a user
would: the real command in a subprocess, its banner awaited, then HTTP requests to the
endpoint and the metrics port. Writes into WORK/result.json what transformers answers
greedily, what the endpoint answered (whole, streamed, refused, cached, health), the
audit lines, the metric names, the engine-metrics check and the timings.

The engine-metrics check: a real Prometheus (tests/observability/promharness.py) scrapes
Ray's metrics endpoint of this ``mmo up`` from the first request on, as the PodMonitor
scrapes a Ray pod, with the chart's rules loaded; while a steady load keeps the engine
busy, every vLLM query of the Engine and Overview dashboards and every engine rule must
return data for the served model. The vLLM families on the endpoint (names, types,
labels) are recorded as Ray Serve LLM really exports them.

Usage: run_up.py WORK
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import checkpoints as ck
import httpx
import yaml

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

REPO = Path(__file__).resolve().parents[2]
OBSERVABILITY = REPO / "tests" / "observability"
ENGINE_BOARDS = [REPO / "charts/mmo/dashboards" / b for b in ("engine.json", "overview.json")]
RULES = REPO / "charts" / "mmo" / "rules"
RULE_FILES = [RULES / f for f in ("mmo-thresholds.yaml", "mmo-serving.yaml", "mmo-engine.yaml")]
VLLM_SERIES = "ray_vllm_"
# Grafana's $__rate_interval on a dashboard showing the last few minutes: the whole run
# falls inside every rate() window
RATE_INTERVAL = "2m"
ENGINE_CHECK_TIMEOUT_S = 180
COMPARISON = re.compile(r"(?<![=!<>~])(>=|<=|==|!=|>|<)(?!=)\s*")

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


def free_port() -> int:
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


def with_token_texts(checkpoint: Path, expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each answer's tokens decoded one by one (special tokens have no text): what a
    stream that sends each token as it is decoded must deliver, chunk by chunk."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    for answer in expected:
        ids = [i for i in answer["ids"] if i not in answer["specials"]]
        answer["pieces"] = [tok.decode([i]) for i in ids]
    return expected


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


def get(client: httpx.Client, path: str) -> dict[str, Any]:
    r = client.get(path)
    return {"status": r.status_code, "body": r.json()}


def embed(client: httpx.Client, text: str) -> dict[str, Any]:
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": text})
    return {"status": r.status_code, "body": r.json()}


class Load(threading.Thread):
    """New questions one after another (whole and streamed, tenant "load"), until
    stopped: the engine stays busy while Prometheus scrapes its gauges."""

    def __init__(self, url: str) -> None:
        super().__init__(name="load", daemon=True)
        self.url = url
        self.done = threading.Event()
        self.codes: list[int] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not self.done.is_set():
                n = len(self.codes)
                body = chat_body(f"Question {n}: what comes next?", stream=n % 2 == 1)
                r = client.post("/v1/chat/completions", json=body, headers={"X-Tenant": "load"})
                self.codes.append(r.status_code)


def as_bool_comparisons(expr: str) -> str:
    """An alert expression with each comparison made ``bool``: a series wherever the
    alert is evaluated (0 or 1), not only where it fires."""
    return COMPARISON.sub(lambda m: f"{m.group(1)} bool ", expr)


def engine_queries(ph: Any) -> list[Any]:
    """Every query of the Engine dashboard and the Overview's engine row, each engine
    recording rule by its name and each engine alert with ``bool`` comparisons."""
    queries = [q for q in ph.panel_queries(ENGINE_BOARDS) if VLLM_SERIES in q.expr]
    for group in yaml.safe_load((RULES / "mmo-engine.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                queries.append(ph.PanelQuery("rules", rule["record"], "record", rule["record"]))
            else:
                expr = as_bool_comparisons(str(rule["expr"]))
                queries.append(ph.PanelQuery("rules", rule["alert"], "alert", expr))
    return queries


def engine_families(exposition: str) -> dict[str, dict[str, Any]]:
    """The vLLM series on Ray's endpoint: series name -> family type, label names and
    the model_name values."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if not sample.name.startswith(VLLM_SERIES):
                continue
            entry = out.setdefault(
                sample.name, {"type": family.type, "labels": set(), "model_names": set()}
            )
            entry["labels"] |= set(sample.labels) - {"le"}
            entry["model_names"].add(sample.labels.get("model_name"))
    return {
        name: {
            **e,
            "labels": sorted(e["labels"]),
            "model_names": sorted(map(str, e["model_names"])),
        }
        for name, e in out.items()
    }


def check_engine_metrics(prom: Any, ph: Any, url: str, metrics_url: str) -> dict[str, Any]:
    """Under a steady load: which engine queries stay empty, and the vLLM families."""
    queries = engine_queries(ph)
    variables = {
        **ph.dashboard_variables(ENGINE_BOARDS),
        "namespace": "local",
        "model": MODEL,
        "__rate_interval": RATE_INTERVAL,
    }
    load = Load(url)
    load.start()
    try:
        empty = ph.empty_queries(prom, queries, variables, timeout=ENGINE_CHECK_TIMEOUT_S)
        exposition = httpx.get(metrics_url, timeout=30).text
    finally:
        load.done.set()
        load.join(timeout=300)
    return {
        "queries": [str(q) for q in queries],
        "empty": empty,
        "families": engine_families(exposition),
        "load_codes": sorted(set(load.codes)),
        "load_requests": len(load.codes),
    }


def start_prometheus(work: Path, metrics_port: int) -> tuple[Any, Any]:
    """promharness' Prometheus scraping Ray's endpoint, labelled as the PodMonitor labels
    a model's pods (namespace, model), with the chart's serving and engine rules."""
    sys.path[:0] = [str(OBSERVABILITY), str(REPO / "tests" / "support")]  # promharness, ports
    import promharness as ph

    prom = ph.PrometheusServer(
        work / "prometheus",
        [f"127.0.0.1:{metrics_port}"],
        labels={"namespace": "local", "model": MODEL},
        rule_files=RULE_FILES,
    )
    (work / "prometheus").mkdir()
    prom.start()
    return prom, ph


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
    expected = with_token_texts(checkpoint, ck.greedy_answers(checkpoint, PROMPTS, MAX_TOKENS))
    spec = write_spec(work, checkpoint)
    timings["checkpoint_and_reference_s"] = time.perf_counter() - t

    port, metrics_port = free_port(), free_port()
    audit = work / "audit.jsonl"
    log = work / "mmo-up.log"
    cmd = [_bin("mmo"), "up", str(spec), "--port", str(port), "--metrics-port",
           str(metrics_port), "--audit-file", str(audit)]  # fmt: skip
    t = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=work)
    result: dict[str, Any] = {"prompts": PROMPTS, "expected": expected, "timings": timings}
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    prom = None
    try:
        wait_ready(proc, log)
        timings["mmo_up_ready_s"] = time.perf_counter() - t
        try:
            prom, ph = start_prometheus(work, metrics_port)
        except Exception as exc:  # reported by the engine-metrics test, not the others
            result["engine_metrics"] = {"error": f"Prometheus did not start: {exc!r}"}
        with httpx.Client(base_url=url, timeout=300) as client:
            t = time.perf_counter()
            result["whole"] = [ask(client, p) for p in PROMPTS]
            timings["whole_answers_s"] = time.perf_counter() - t
            # another tenant: its own cache scope, so the engine streams these answers
            result["streamed"] = [ask_stream(client, p, {"X-Tenant": "stream"}) for p in PROMPTS]
            result["repeated"] = ask(client, PROMPTS[0])
            result["bad_header"] = ask(client, PROMPTS[0], {"X-Data-Class": "secret"})
            result["embeddings"] = embed(client, PROMPTS[0])
            result["models"] = get(client, "/v1/models")
            result["readyz"] = get(client, "/readyz")
            result["expert_load"] = get(client, "/v1/expert-load")
        result["metrics"] = metric_names(metrics_url, "mmo_cache_hits")
        result["audit"] = [
            json.loads(line) for line in audit.read_text().splitlines() if line.strip()
        ]
        if prom is not None:
            t = time.perf_counter()
            result["engine_metrics"] = check_engine_metrics(prom, ph, url, metrics_url)
            timings["engine_metrics_s"] = time.perf_counter() - t
    except BaseException:
        stop(proc)
        print(log.read_text(errors="replace")[-6000:])  # what mmo up said, for the test
        raise
    finally:
        if prom is not None:
            prom.stop()
        result["exit_code"] = stop(proc)
        result["log"] = log.read_text(errors="replace")[-20000:]
        (work / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main(Path(sys.argv[1]))
