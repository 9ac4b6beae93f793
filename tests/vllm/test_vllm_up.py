"""``mmo up FILE`` with engine vllm on a local checkpoint directory, on the CPU: the real
command serves a tiny random-weight Qwen3-MoE through the whole application -- mmo's
front and gateway, Ray Serve LLM, vLLM -- and answers greedily exactly as transformers
does, streams as it decodes, and keeps the gateway's behaviour (header checks, cache,
audit, models, mmo_* metrics).

One ``mmo up`` for the whole module (about a minute and a half to start and 3.5 GB of
memory): ``tests/vllm/run_up.py`` drives it under .venv-vllm; this module only reads what
it wrote (result.json) and compares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="module")
def up(
    vllm_run: Callable[..., dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    result = vllm_run("run_up.py", tmp_path_factory.mktemp("vllm-up"), timeout=1200)
    print("timings:", result["timings"])
    return result


def _pairs(up: dict[str, Any], key: str) -> list[tuple[dict[str, Any], Any]]:
    assert len(up[key]) == len(up["expected"]) >= 3
    return list(zip(up["expected"], up[key], strict=True))


def test_up_says_it_runs_vllm_on_the_cpu_and_stops_cleanly(up: dict[str, Any]) -> None:
    assert "mmo up: engine vllm on the CPU (file:///" in up["log"]
    assert "mmo: tiny-qwen3-moe is serving" in up["log"]
    assert "mmo up: stopped" in up["log"]
    assert up["exit_code"] == 0


def test_up_greedy_answers_equal_transformers(up: dict[str, Any]) -> None:
    for expected, got in _pairs(up, "whole"):
        assert got["status"] == 200, got
        assert got["cache"] == "miss"
        body = got["body"]
        (choice,) = body["choices"]
        assert choice["message"]["content"] == expected["text"]
        assert body["usage"]["completion_tokens"] == len(expected["ids"])
        assert body["usage"]["prompt_tokens"] == expected["prompt_tokens"]
        ended_by_eos = expected["ids"][-1] in expected["specials"]
        assert choice["finish_reason"] == ("stop" if ended_by_eos else "length")


def test_up_streams_each_decoded_token_from_the_engine(up: dict[str, Any]) -> None:
    pairs = _pairs(up, "streamed")
    for (expected, streamed), whole in zip(pairs, up["whole"], strict=True):
        assert streamed["status"] == 200
        assert streamed["content_type"].startswith("text/event-stream")
        assert streamed["cache"] == "miss"  # another tenant: the engine streamed it
        *chunks, done = streamed["chunks"]
        assert done == "[DONE]"
        texts = [c["choices"][0]["delta"].get("content") for c in chunks]
        pieces = [t for t in texts if t]
        # one chunk per decoded token with text (special tokens such as EOS have none)
        with_text = [i for i in expected["ids"] if i not in expected["specials"]]
        assert len(pieces) == len(with_text) > 1
        assert "".join(pieces) == whole["body"]["choices"][0]["message"]["content"]
        assert (
            chunks[-1]["choices"][0]["finish_reason"]
            == (whole["body"]["choices"][0]["finish_reason"])
        )


def test_up_gateway_in_front_of_vllm(up: dict[str, Any]) -> None:
    repeated = up["repeated"]
    assert repeated["status"] == 200 and repeated["cache"] == "hit"
    assert repeated["body"]["choices"] == up["whole"][0]["body"]["choices"]

    bad = up["bad_header"]
    assert bad["status"] == 400
    assert "X-Data-Class" in bad["body"]["error"]["message"]

    assert up["models"]["status"] == 200
    assert [m["id"] for m in up["models"]["body"]["data"]] == ["tiny-qwen3-moe"]


def test_up_audit_and_metrics(up: dict[str, Any]) -> None:
    # one line per request, in order: whole answers, streams (tenant "stream"), the
    # repeated one (served from the cache), the refused header
    n = len(up["prompts"])
    lines = [(a["status"], a["tenant"], a["decision"]) for a in up["audit"]]
    assert lines == [(200, "default", "local")] * n + [(200, "stream", "local")] * n + [
        (200, "default", "local"),
        (400, "default", "refuse"),
    ]
    assert all(a["requestId"] for a in up["audit"])
    names = " ".join(up["metrics"])
    for metric in ("mmo_requests_total", "mmo_cache_hits_total", "mmo_policy_decisions_total"):
        assert metric in names, up["metrics"]
