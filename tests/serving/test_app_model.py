"""The Serve app on the real built-in model with INT8 (AppArgs.quantization="int8"):
the default engine factory loads the checkpoint, quantizes it, and answers pictures of
coloured shapes correctly over HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


def _builtin_available() -> bool:
    from mmo_operator.api.builtin import checkpoint_dir

    try:
        checkpoint_dir("shapes-moe")
    except Exception:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def int8_url(ray_cluster: Any) -> Iterator[str]:
    if not _builtin_available():
        pytest.skip("builtin://shapes-moe checkpoint not installed")
    from mmo_serving.app import build_app

    port = _free_port()
    args = {
        "name": "vqa-int8",
        "modelSource": "builtin://shapes-moe",
        "quantization": "int8",
        "numGpus": 1,
        "cache": {"enabled": False},
    }
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="int8", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _scene(index: int) -> tuple[str, list[tuple[str, str]]]:
    from mmo_serving.images import encode_data_url
    from mmo_serving.model.tasks import make_sample

    sample = make_sample(index, seed=11, split="test")
    url = encode_data_url(np.asarray(sample.image))
    return url, [(qa.question, qa.answer) for qa in sample.qas]


def test_app_int8_model_answers_pictures(int8_url: str) -> None:
    ready = httpx.get(f"{int8_url}/readyz", timeout=30).json()
    assert ready["quantization"] == "int8" and ready["engine"] == "LocalEngine"
    right = total = 0
    with httpx.Client(base_url=int8_url, timeout=120) as client:
        for index in range(4):
            url, qas = _scene(index)
            for question, answer in qas:
                body = {
                    "model": "vqa-int8",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": question},
                                {"type": "image_url", "image_url": {"url": url}},
                            ],
                        }
                    ],
                }
                r = client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                total += 1
                right += r.json()["choices"][0]["message"]["content"].strip() == answer
    # the checkpoint answers held-out questions well; INT8 must not break that
    assert right / total >= 0.75, f"{right}/{total}"
