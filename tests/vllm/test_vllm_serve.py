"""vLLM on Ray Serve LLM behind an ingress that answers through VllmChatEngine, on the
CPU: a tiny random-weight Qwen3-MoE answers greedily exactly as transformers does, and
streams one delta per decoded token.

One Serve app for the whole module (about a minute to start and 3.5 GB of memory): the
app runs in ``tests/vllm/run_serve.py`` under .venv-vllm; this module only reads what it
wrote (result.json) and compares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="module")
def served(
    vllm_run: Callable[..., dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    result = vllm_run("run_serve.py", tmp_path_factory.mktemp("vllm-serve"), timeout=1200)
    print("timings:", result["timings"])
    return result


def _pairs(served: dict[str, Any], key: str) -> list[tuple[dict[str, Any], Any]]:
    assert len(served[key]) == len(served["expected"]) >= 3
    return list(zip(served["expected"], served[key], strict=True))


def test_greedy_token_ids_equal_transformers(served: dict[str, Any]) -> None:
    for expected, got in _pairs(served, "token_ids"):
        assert got["ids"] == expected["ids"]


def test_greedy_answers_equal_transformers(served: dict[str, Any]) -> None:
    for expected, got in _pairs(served, "whole"):
        assert got["text"] == expected["text"]
        assert got["completion_tokens"] == len(expected["ids"])
        assert got["prompt_tokens"] == expected["prompt_tokens"]
        ended_by_eos = expected["ids"][-1] in expected["specials"]
        assert got["finish_reason"] == ("stop" if ended_by_eos else "length")


def test_stream_delivers_each_token_and_the_same_answer(served: dict[str, Any]) -> None:
    pairs = _pairs(served, "streamed")
    for (expected, streamed), whole in zip(pairs, served["whole"], strict=True):
        deltas = streamed["deltas"]
        *tokens, last = deltas
        # one delta per decoded token with text (special tokens such as EOS have none)
        with_text = [i for i in expected["ids"] if i not in expected["specials"]]
        assert len(tokens) == len(with_text) > 1
        assert all(d["text"] and d["finish_reason"] is None for d in tokens)
        assert "".join(d["text"] for d in tokens) == whole["text"]
        assert last["text"] == ""
        assert last["finish_reason"] == whole["finish_reason"]
        assert (last["prompt_tokens"], last["completion_tokens"]) == (
            whole["prompt_tokens"],
            whole["completion_tokens"],
        )


def test_embeddings_refused_for_a_generative_model(served: dict[str, Any]) -> None:
    assert served["embeddings"]["status"] == 400
    assert "has no embedding head" in served["embeddings"]["body"]["error"]


def test_health_goes_through_the_deployment(served: dict[str, Any]) -> None:
    assert served["health"] == {"status": 200, "body": {"expertLoad": None}}
