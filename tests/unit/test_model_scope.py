"""The built-in model says when a question is outside its task (unknown words, no
picture) instead of answering a colour or yes/no; the task's own questions never are."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from mmo_serving.model import tasks
from mmo_serving.model.checkpoint import resolve_source
from mmo_serving.model.inference import answer_batch, answer_ids, generate_ids
from mmo_serving.model.scope import REFUSAL, refusal_reason
from mmo_serving.model.tokenizer import WordTokenizer, default_tokenizer
from mmo_serving.model.transformer import build_model

TOK = default_tokenizer()
PICTURE = np.full((32, 32, 3), 255, dtype=np.uint8)


@pytest.fixture(scope="module")
def model(tiny_config):
    m = build_model(tiny_config(), seed=4)
    with torch.no_grad():
        m.lm_head.weight.mul_(40)
    return m.eval()


@pytest.mark.parametrize(
    ("question", "has_image", "reason"),
    [
        ("hello, who are you?", True, "words the model does not know"),
        ("what is the capital of France?", True, "words the model does not know: capital"),
        ("", True, "no question"),
        ("?!", True, "no question"),
        ("what colour is the circle?", False, "no picture"),
        ("what colour is the circle?", True, None),
        ("Is there an orange triangle?", True, None),  # case, "an", punctuation
    ],
)
def test_refusal_reason(question: str, has_image: bool, reason: str | None) -> None:
    got = refusal_reason(TOK, question, has_image)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason), got


def test_unknown_words_are_named() -> None:
    assert refusal_reason(TOK, "hello, who are you?", True) == (
        "words the model does not know: hello, who"
    )
    assert refusal_reason(TOK, "what is the capital of france", True) == (
        "words the model does not know: capital, france"
    )


def test_out_of_task_questions_get_the_fixed_sentence(model) -> None:
    images = [PICTURE, PICTURE, None, PICTURE, PICTURE]
    questions = [
        "what colour is the circle?",
        "hello, who are you?",
        "what colour is the circle?",  # no picture
        "",
        "how many shapes are there?",
    ]
    answers = answer_batch(model, TOK, images, questions, max_new_tokens=3)
    assert [a == REFUSAL for a in answers] == [False, True, True, True, False]
    # the answered rows are exactly what the model says for them alone
    alone = generate_ids(model, TOK, [PICTURE, PICTURE], [questions[0], questions[4]], 3)
    assert [answers[0], answers[4]] == [TOK.decode(r) for r in alone]
    assert answer_ids(model, TOK, images, questions, 3) == [alone[0], None, None, None, alone[1]]


def test_only_refusals_never_run_the_model(model) -> None:
    with torch.no_grad():
        broken = build_model(model.config, seed=0).eval()
    broken.prefill = None  # type: ignore[assignment,method-assign]  # a call would fail
    assert answer_batch(broken, TOK, [None, PICTURE], ["what shape?", "hi there"]) == [
        REFUSAL,
        REFUSAL,
    ]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_task_questions_are_never_refused(split: str) -> None:
    """Every kind and template of the generator's questions, with the tokenizer built here
    and the one shipped with the checkpoint: `mmo eval` accuracy cannot drop."""
    tokenizers = [TOK]
    shipped = resolve_source("builtin://shapes-moe") / "tokenizer.json"
    if shipped.is_file():
        tokenizers.append(WordTokenizer.load(shipped))
    questions = [qa for s in tasks.iter_samples(100, seed=5, split=split) for qa in s.qas]
    assert len(questions) == 400 and {qa.kind for qa in questions} == set(tasks.QUESTION_KINDS)
    for tok in tokenizers:
        refused = [qa.question for qa in questions if refusal_reason(tok, qa.question, True)]
        assert refused == []


def test_local_engine_refuses_outside_the_task() -> None:
    from mmo_serving.config import AppArgs
    from mmo_serving.engine.builtin_runner import ModelSource
    from mmo_serving.engine.in_process import LocalEngine
    from mmo_serving.engine.types import GenerationRequest

    tiny = {
        "d_model": 32, "n_layers": 2, "n_heads": 2, "n_experts": 8, "top_k": 2,
        "d_expert": 16, "image_size": 16, "stem_channels": (8, 8), "embed_dim": 16,
    }  # fmt: skip
    source = ModelSource("tiny://", tiny=tiny, seed=5)
    engine = LocalEngine(AppArgs(name="t", model_source="tiny://", num_gpus=1), source)
    requests = [
        GenerationRequest("what colour is the circle?", PICTURE, 4),
        GenerationRequest("hello, who are you?", PICTURE, 4),
        GenerationRequest("what colour is the circle?", None, 1),
    ]
    results = asyncio.run(engine.generate(requests))
    assert results[0] == source().generate(requests[:1])[0]
    assert results[0].text != REFUSAL
    for request, result in zip(requests[1:], results[1:], strict=True):
        assert result.text == REFUSAL
        # no token generated: the app reports finish_reason "stop" (tokens < max_tokens)
        assert result.tokens == 0 < request.max_new_tokens
        assert result.prompt_tokens > 0
