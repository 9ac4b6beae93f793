"""``mmo up FILE`` with engine vllm on a local checkpoint directory, on the CPU: the real
command serves a tiny random-weight Qwen3-MoE through the whole application -- mmo's
front and gateway, Ray Serve LLM, vLLM -- and answers greedily exactly as transformers
does, streams each token as it is decoded, keeps the gateway's behaviour (header checks,
cache, audit, models, health, refusals, mmo_* metrics), and exports vLLM's engine
metrics as the dashboards and alerts read them (a real Prometheus scrapes the run).

One ``mmo up`` for the whole module (about a minute and a half to start and 3.5 GB of
memory): ``tests/vllm/run_up.py`` drives it under .venv-vllm; this module only reads what
it wrote (result.json) and compares.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

MODEL = "tiny-qwen3-moe"
# Counters Ray exports only after their first increment, whose event this run never
# causes (its KV cache is never full).
NOT_BEFORE_FIRST_EVENT = {"ray_vllm_num_preemptions_total"}
OBSERVABILITY = Path(__file__).resolve().parents[1] / "observability"


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
        # one chunk per decoded token with text (special tokens such as EOS have none),
        # each the text of transformers' token at that place: the same tokens, in order
        assert pieces == expected["pieces"]
        assert len(pieces) > 1
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
    # repeated one (served from the cache), the refused header, the embeddings request
    # (the gateway lets it through, local; the line, written when the request ends, has
    # the engine's 400)
    n = len(up["prompts"])
    lines = [(a["status"], a["tenant"], a["decision"]) for a in up["audit"]]
    assert lines == [(200, "default", "local")] * n + [(200, "stream", "local")] * n + [
        (200, "default", "local"),
        (400, "default", "refuse"),
        (400, "default", "local"),
    ]
    assert up["audit"][-1]["error"] == "unsupported_by_engine"
    assert all(a["requestId"] for a in up["audit"])
    names = " ".join(up["metrics"])
    for metric in ("mmo_requests_total", "mmo_cache_hits_total", "mmo_policy_decisions_total"):
        assert metric in names, up["metrics"]


def test_up_refuses_embeddings_for_a_generative_model(up: dict[str, Any]) -> None:
    refused = up["embeddings"]
    assert refused["status"] == 400
    assert "has no embedding head" in refused["body"]["error"]["message"]


def test_up_readiness_asks_the_engine(up: dict[str, Any]) -> None:
    ready = up["readyz"]
    assert ready["status"] == 200
    assert ready["body"]["status"] == "ready"
    assert ready["body"]["engine"] == "VllmChatEngine"
    # vLLM does not report per-expert load to mmo
    assert up["expert_load"]["status"] == 404
    assert up["expert_load"]["body"]["error"]["code"] == "expert_load_unavailable"


def _fake_vllm_exporter() -> ModuleType:
    """tests/observability/fake_vllm_exporter.py: its table of vLLM's families is what
    the dashboard harness and the rules' contract test check against."""
    path = OBSERVABILITY / "fake_vllm_exporter.py"
    spec = importlib.util.spec_from_file_location("mmo_obs_fake_vllm_exporter", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _engine_metrics(up: dict[str, Any]) -> dict[str, Any]:
    engine = dict(up["engine_metrics"])
    assert "error" not in engine, engine["error"]
    return engine


def test_up_exports_vllm_metrics_as_the_fake_exporter_serves_them(up: dict[str, Any]) -> None:
    real = _engine_metrics(up)["families"]
    fake = _fake_vllm_exporter()
    wrong = {
        name: (kind, real.get(name, {}).get("type"))
        for name, kind in fake.exported_series_names().items()
        if real.get(name, {}).get("type") != kind
        and not (name in NOT_BEFORE_FIRST_EVENT and name not in real)
    }
    assert wrong == {}, f"(fake, real) types; real series: {sorted(real)}"
    for family, (_, extra, _) in fake.VLLM_FAMILIES.items():
        labels = {*fake.VLLM_LABELS, *extra, *fake.RAY_WRAPPER_LABELS, *fake.RAY_LABELS}
        for name, series in real.items():
            if name.startswith(fake.ray_name(family)):
                assert labels <= set(series["labels"]), (name, series["labels"])
                assert series["model_names"] == [MODEL], name


def test_up_engine_dashboards_and_alerts_read_the_real_exporter(up: dict[str, Any]) -> None:
    engine = _engine_metrics(up)
    assert engine["load_codes"] == [200] and engine["load_requests"] > 0
    queries = engine["queries"]
    assert sum(q.startswith("mmo / Engine") for q in queries) >= 9
    assert any(q.startswith("mmo / Overview") for q in queries)
    assert sum(q.startswith("rules") for q in queries) == 3
    assert engine["empty"] == [], "no data from the real vLLM exporter:\n" + "\n".join(
        engine["empty"]
    )
