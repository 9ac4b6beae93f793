"""Every dashboard panel query returns data from a real `mmo up` under load.

One `mmo up` of the hybrid sample (so that every isolation outcome can happen), with its cloud
endpoint pointed at a fake OpenAI-compatible server on loopback that fails every fourth call
(-> fallbacks). Debian's Prometheus scrapes Ray's metrics endpoint (ray_mmo_* -> mmo_*), a
short load covers text, images, cache hits, offloads with PII, refusals and bad requests,
then every panel query of the Overview, Experts and Isolation dashboards must return data.
The Operator dashboard is checked against the operator's metrics module in
test_dashboards_harness.py (there is no operator under `mmo up`), and so are the Overview's
vLLM engine row and the Engine dashboard, against vLLM's metric families (this `mmo up`
serves the built-in engine, which exports no ray_vllm_* series).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "manifests" / "samples" / "hybrid-vqa.yaml"
SERVING_BOARDS = ["overview.json", "experts.json", "isolation.json"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


class FakeCloud(BaseHTTPRequestHandler):
    """OpenAI-compatible chat completions; every fourth call fails (500)."""

    calls = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        with FakeCloud.lock:
            FakeCloud.calls += 1
            fail = FakeCloud.calls % 4 == 0
        if fail:
            self.send_response(500)
            self.end_headers()
            return
        body = json.dumps(
            {
                "id": "cloud-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "cloud",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "a red circle"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (it is also the CA bundle `mmo up --ca-bundle` trusts)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cloud.pem", tmp / "cloud.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(endpoint URL, CA bundle) of a fake HTTPS cloud on loopback."""
    cert, key = self_signed(tmp_path_factory.mktemp("cloud"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeCloud)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/v1", cert
    finally:
        server.shutdown()
        server.server_close()


def hybrid_spec(tmp: Path, endpoint: str) -> tuple[Path, str]:
    spec = yaml.safe_load(SAMPLE.read_text())
    hybrid = spec["spec"]["isolation"]["hybrid"]
    hybrid["endpoint"] = endpoint
    hybrid["cidrs"] = ["127.0.0.1/32"]
    path = tmp / "hybrid-local.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, spec["metadata"]["name"]


@pytest.fixture(scope="module")
def mmo_up(
    promharness: ModuleType, cloud: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("up")
    endpoint, ca_bundle = cloud
    spec, name = hybrid_spec(tmp, endpoint)
    port, metrics_port = promharness.free_port(), promharness.free_port()
    log = tmp / "mmo-up.log"
    env = dict(os.environ, MMO_CLOUD_API_KEY="test-key", RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        str(Path(sys.executable).parent / "mmo"), "up", str(spec),
        "--port", str(port), "--metrics-port", str(metrics_port), "--num-cpus", "4",
        "--audit-file", str(tmp / "audit.jsonl"), "--timeout", "900",
        "--ca-bundle", str(ca_bundle),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                text = log.read_text()
                pytest.fail(f"`mmo up` exited with {proc.returncode}: {text[-3000:]}")
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`mmo up` not ready in time: {log.read_text()[-3000:]}")
            time.sleep(3)
        yield {"url": url, "metrics": f"127.0.0.1:{metrics_port}", "name": name, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # mmo up shuts Serve and Ray down on SIGTERM
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group of the process we started
                proc.wait(timeout=30)


def png_data_url() -> str:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(img).ellipse((16, 16, 48, 48), fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def requests_for(name: str, round_: int = 0) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(path, body, headers): every outcome the dashboards show.

    Each round asks new questions (repeats inside a round give the cache hits), so the
    engine batches in every round and rate() windows after the last round have data.
    """
    chat = "/v1/chat/completions"

    def ask(text: str, image: str | None = None, **extra: Any) -> dict[str, Any]:
        content: Any = text
        if image:
            content = [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": image}},
            ]
        return {
            "model": name,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 8,
            **extra,
        }

    image = png_data_url()
    sensitive = {"X-Data-Class": "sensitive"}
    public = {"X-Data-Class": "public"}
    reqs: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    for i in range(6):  # local, with repeats for cache hits
        reqs.append((chat, ask(f"what colour is shape {i % 3} of {round_}?"), sensitive))
        reqs.append((chat, ask(f"what colour is circle {round_}?", image), sensitive))
    to_cloud = {**public, "X-Route": "cloud"}
    for i in range(8):  # offloads (with PII to redact) and, every fourth cloud call, fallbacks
        reqs.append((chat, ask(f"write to jane.doe{i}@example.com about shape {i}"), to_cloud))
    reqs.append((chat, ask("describe", "https://example.com/cat.png"), public))  # refused
    reqs.append((chat, ask("describe", "http://203.0.113.9/x.png"), sensitive))  # refused
    reqs.append((chat, {"model": name, "messages": []}, sensitive))  # invalid: 400
    for i in range(3):
        reqs.append(("/v1/embeddings", {"model": name, "input": f"shape {i} {round_}"}, sensitive))
    return reqs


@pytest.fixture(scope="module")
def loaded_prometheus(
    promharness: ModuleType, mmo_up: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    prom = promharness.PrometheusServer(
        tmp_path_factory.mktemp("prom"),
        [mmo_up["metrics"]],
        labels={"namespace": "local", "model": mmo_up["name"]},
    )
    with prom:
        prom.wait_targets_up(timeout=120)
        codes: list[int] = []
        with httpx.Client(base_url=mmo_up["url"], timeout=300) as client:

            def send(req: tuple[str, dict[str, Any], dict[str, str]]) -> int:
                path, body, headers = req
                return int(client.post(path, json=body, headers=headers).status_code)

            for round_ in range(2):  # two rounds, so that rates have two points
                with ThreadPoolExecutor(max_workers=4) as pool:
                    codes += list(pool.map(send, requests_for(mmo_up["name"], round_)))
                time.sleep(5)
        assert 200 in codes and any(c >= 400 for c in codes), codes
        yield prom


def test_every_serving_panel_returns_data(promharness: ModuleType, loaded_prometheus: Any) -> None:
    boards = [REPO / "charts/mmo/dashboards" / b for b in SERVING_BOARDS]
    queries = [q for q in promharness.panel_queries(boards) if "ray_vllm_" not in q.expr]
    variables = promharness.dashboard_variables(boards)
    empty = promharness.empty_queries(loaded_prometheus, queries, variables, timeout=120)
    assert empty == [], "panels with no data from `mmo up`:\n" + "\n".join(empty)
