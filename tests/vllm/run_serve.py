"""Run by .venv-vllm's python (see conftest.run_script): a tiny Qwen3-MoE served by vLLM
through Ray Serve LLM, with a FastAPI ingress in front that holds the LLM deployment's
handle and answers through :class:`mmo_serving.vllm_engine.VllmChatEngine` (the shape of
mmo's front). Writes into WORK/result.json what transformers answers greedily, what the
app answers (whole and streamed), and the timings.

Usage: run_serve.py WORK
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import checkpoints as ck
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from mmo_serving.backend import ChatInput, EmbedInput, EngineUnsupported
from mmo_serving.config import AppArgs
from mmo_serving.vllm_engine import (
    VllmChatEngine,
    build_vllm_deployment,
    embeddings_enabled,
    model_id_of,
)

MODEL = "tiny-qwen3-moe"
MAX_TOKENS = 12
PROMPTS = (
    "Hello there, what is the answer?",
    "Name three colours.",
    "Why is the sky blue?",
    "Write one line about the sea.",
)

api = FastAPI()


@serve.deployment(name="front", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Front:
    """mmo's front reduced to what the engine needs: a ChatInput in, ChatOutput or
    ChatDelta lines out; EngineUnsupported -> 400."""

    def __init__(self, llm: Any, args: dict[str, Any], llm_config: dict[str, Any]) -> None:
        self.llm = llm
        self.engine = VllmChatEngine(
            llm,
            AppArgs.model_validate(args),
            model_id=model_id_of(llm_config),
            embeddings=embeddings_enabled(llm_config),
        )

    @api.post("/chat")
    async def chat(self, request: Request) -> Any:
        body = await request.json()
        inp = ChatInput(
            body=body,
            prompt="",
            max_tokens=int(body.get("max_tokens") or MAX_TOKENS),
            request_id=request.headers.get("x-request-id", ""),
        )
        if not body.get("stream"):
            return asdict(await self.engine.chat(inp))

        async def lines() -> Any:
            async for delta in self.engine.chat_stream(inp):
                yield json.dumps(asdict(delta)) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @api.post("/embeddings")
    async def embeddings(self, request: Request) -> Any:
        body = await request.json()
        try:
            return await self.engine.embed([EmbedInput(text=body["input"])])
        except EngineUnsupported as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    @api.get("/health")
    async def health(self) -> Any:
        await self.engine.check_health()
        return {"expertLoad": await self.engine.expert_load()}

    @api.post("/token_ids")
    async def token_ids(self, request: Request) -> Any:
        """The generated token ids, asked of the LLM deployment directly (vLLM's
        ``return_token_ids``): what the text answers are compared with."""
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        body = await request.json()
        req = ChatCompletionRequest.model_validate(
            {**body, "model": MODEL, "return_token_ids": True}
        )
        async for item in self.llm.options(stream=True).chat.remote(req, None):
            return {"ids": item.choices[0].token_ids, "text": item.choices[0].message.content}
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _messages(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


def llm_config(checkpoint: Path) -> dict[str, Any]:
    return {
        "model_loading_config": {"model_id": MODEL, "model_source": str(checkpoint)},
        # without it the replica asks for a GPU and is never scheduled
        "accelerator_config": {"kind": "cpu"},
        "engine_kwargs": {
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 512,
            "max_num_seqs": 4,
        },
        # each token as it is decoded, not in 50 ms groups
        "experimental_configs": {"stream_batching_interval_ms": 0},
        "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    }


def ask(client: httpx.Client, prompt: str, *, stream: bool) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": _messages(prompt),
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": stream,
    }
    start = time.perf_counter()
    if not stream:
        r = client.post("/chat", json=body)
        r.raise_for_status()
        return {**r.json(), "seconds": time.perf_counter() - start}
    deltas, arrivals = [], []
    with client.stream("POST", "/chat", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line:
                deltas.append(json.loads(line))
                arrivals.append(time.perf_counter() - start)
    return {"deltas": deltas, "arrivals": arrivals}


def main(work: Path) -> None:
    import ray

    timings: dict[str, float] = {}
    t = time.perf_counter()
    checkpoint = ck.make_qwen3_moe(work / "qwen3-moe")
    expected = ck.greedy_answers(checkpoint, PROMPTS, MAX_TOKENS)
    timings["checkpoint_and_reference_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    timings["ray_init_s"] = time.perf_counter() - t
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = llm_config(checkpoint)
        args = AppArgs(name=MODEL, model_source=str(checkpoint), engine="vllm").to_json_dict()
        t = time.perf_counter()
        serve.run(Front.bind(build_vllm_deployment(cfg), args, cfg), name="vllm", route_prefix="/")
        timings["serve_run_s"] = time.perf_counter() - t
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            t = time.perf_counter()
            whole = [ask(client, p, stream=False) for p in PROMPTS]
            timings["first_answer_s"] = whole[0]["seconds"]
            timings["whole_answers_s"] = time.perf_counter() - t
            t = time.perf_counter()
            streamed = [ask(client, p, stream=True) for p in PROMPTS]
            timings["streamed_answers_s"] = time.perf_counter() - t
            ids = [
                client.post(
                    "/token_ids",
                    json={"messages": _messages(p), "max_tokens": MAX_TOKENS, "temperature": 0},
                ).json()
                for p in PROMPTS
            ]
            embed = client.post("/embeddings", json={"input": "hello"})
            health = client.get("/health")
        result = {
            "prompts": PROMPTS,
            "expected": expected,
            "whole": whole,
            "streamed": streamed,
            "token_ids": ids,
            "embeddings": {"status": embed.status_code, "body": embed.json()},
            "health": {"status": health.status_code, "body": health.json()},
            "timings": timings,
        }
        (work / "result.json").write_text(json.dumps(result))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main(Path(sys.argv[1]))
