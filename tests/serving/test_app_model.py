"""The Serve app on the real built-in model with INT8 (AppArgs.quantization="int8"):
the default engine factory loads the checkpoint, quantizes it, and answers pictures of
coloured shapes correctly over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from ray import serve

from ports import free_port

SOURCE = "builtin://shapes-moe"


def _builtin_available() -> bool:
    from mmo_serving.model.checkpoint import resolve_source

    return (resolve_source(SOURCE) / "config.json").is_file()


@pytest.fixture(scope="module")
def int8_url(ray_cluster: Any) -> Iterator[str]:
    assert _builtin_available(), "builtin://shapes-moe missing from serving/mmo_serving/assets"
    from mmo_serving.app import build_app

    port = free_port()
    args = {
        "name": "vqa-int8",
        "modelSource": SOURCE,
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


def _questions(n_images: int) -> list[tuple[np.ndarray, str, str]]:
    from mmo_serving.model.tasks import make_sample

    out = []
    for index in range(n_images):
        sample = make_sample(index, seed=11, split="test")
        image = np.asarray(sample.image.convert("RGB"))
        out += [(image, qa.question, qa.answer) for qa in sample.qas]
    return out


def test_app_int8_model_answers_pictures(int8_url: str) -> None:
    """INT8 over HTTP answers like the float model does in this process (same checkpoint)."""
    from mmo_serving.images import encode_data_url
    from mmo_serving.model import answer_batch, load_model

    ready = httpx.get(f"{int8_url}/readyz", timeout=30).json()
    assert ready["quantization"] == "int8" and ready["engine"] == "LocalEngine"
    cases = _questions(5)
    model, tok, _ = load_model(SOURCE, "cpu")
    model.eval()
    reference = answer_batch(model, tok, [c[0] for c in cases], [c[1] for c in cases], 8)
    served = []
    with httpx.Client(base_url=int8_url, timeout=120) as client:
        for image, question, _ in cases:
            content = [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": encode_data_url(image)}},
            ]
            body = {"model": "vqa-int8", "messages": [{"role": "user", "content": content}]}
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            served.append(r.json()["choices"][0]["message"]["content"].strip())
    agree = sum(a == b.strip() for a, b in zip(served, reference, strict=True)) / len(cases)
    float_acc = sum(b.strip() == c[2] for b, c in zip(reference, cases, strict=True)) / len(cases)
    int8_acc = sum(a == c[2] for a, c in zip(served, cases, strict=True)) / len(cases)
    assert agree >= 0.85, (agree, served, reference)
    assert int8_acc >= float_acc - 0.1, (int8_acc, float_acc)
