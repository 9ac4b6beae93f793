"""Generation and embeddings on a tiny random model: the KV cache changes nothing,
padding changes nothing, images of any size/mode are accepted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmo_serving.model import tasks
from mmo_serving.model.config import ConfigError
from mmo_serving.model.inference import answer, answer_batch, embed_image, embed_text, generate_ids
from mmo_serving.model.preprocess import ImageError, preprocess
from mmo_serving.model.tokenizer import default_tokenizer
from mmo_serving.model.transformer import build_model

TOK = default_tokenizer()


@pytest.fixture(scope="module")
def model(tiny_config):
    m = build_model(tiny_config(), seed=1)
    with torch.no_grad():  # spread the logits so that greedy choices differ between rows
        m.lm_head.weight.mul_(40)
    return m.eval()


@pytest.fixture(scope="module")
def samples():
    return list(tasks.iter_samples(6, seed=9, split="val"))


def test_kv_cache_generation_equals_full_recompute(model, samples) -> None:
    images = [s.image for s in samples] + [None, None]
    questions = [s.qas[0].question for s in samples] + [
        "how many shapes?",
        "is there a red circle in the image?",
    ]
    cached = generate_ids(model, TOK, images, questions, max_new_tokens=6, use_cache=True)
    full = generate_ids(model, TOK, images, questions, max_new_tokens=6, use_cache=False)
    assert cached == full
    assert any(len(c) > 1 for c in cached)  # the test really decoded several steps


def test_decode_step_logits_match_prefill_of_the_longer_prompt(model, samples) -> None:
    from mmo_serving.model.inference import _images_tensor, encode_questions

    x, has = _images_tensor(model, [samples[0].image, samples[1].image])
    ids, valid = encode_questions(TOK, ["what colour is the circle?", "how many shapes?"], 24)
    with torch.no_grad():
        logits, cache = model.prefill(x, has, ids, valid)
        nxt = logits.argmax(-1)
        step_logits, _ = model.decode_step(nxt, cache)
        ref, _ = model.prefill(
            x, has, torch.cat([ids, nxt[:, None]], 1), torch.cat([valid, valid[:, :1] | True], 1)
        )
    torch.testing.assert_close(step_logits, ref, rtol=1e-4, atol=1e-4)


def test_batched_answers_equal_single_answers(model, samples) -> None:
    """Left padding and rows without images do not leak into other rows."""
    images = [samples[0].image, None, samples[2].image]
    questions = ["what shape is the red one in the image?", "how many?", "is there a blue square?"]
    batched = generate_ids(model, TOK, images, questions, max_new_tokens=4)
    single = [
        generate_ids(model, TOK, [im], [q], max_new_tokens=4)[0]
        for im, q in zip(images, questions, strict=True)
    ]
    assert batched == single
    with_image = [0, 2]  # answer_batch runs only these (a question without a picture is refused)
    answers = answer_batch(model, TOK, images, questions)
    assert [answers[i] for i in with_image] == [
        answer(model, TOK, images[i], questions[i]) for i in with_image
    ]


def test_generation_input_errors(model) -> None:
    with pytest.raises(ValueError, match="got 2 images but 1 questions"):
        answer_batch(model, TOK, [None, None], ["how many shapes?"])
    assert answer_batch(model, TOK, [], []) == []


def test_embeddings_are_unit_vectors(model, samples) -> None:
    ie = embed_image(model, [s.image for s in samples])
    te = embed_text(model, TOK, [s.caption for s in samples])
    assert ie.shape == (6, 16) and te.shape == (6, 16)
    torch.testing.assert_close(ie.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(te.norm(dim=-1), torch.ones(6))
    # batching does not change a text embedding (right padding is masked)
    torch.testing.assert_close(
        embed_text(model, TOK, [samples[0].caption])[0], te[0], rtol=1e-5, atol=1e-5
    )


def test_preprocess_accepts_any_size_and_mode() -> None:
    rgba = Image.new("RGBA", (100, 40), (255, 0, 0, 0))  # fully transparent -> white
    x = preprocess(rgba, 16)
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, torch.ones(3, 16, 16))
    gray = np.full((33, 500), 7, dtype=np.uint8)
    assert preprocess(gray, 16).shape == (3, 16, 16)
    arr = np.zeros((512, 300, 3), dtype=np.uint8)
    assert preprocess(arr, 16).shape == (3, 16, 16)
    assert preprocess(Image.new("P", (32, 32)), 16).shape == (3, 16, 16)


def test_preprocess_errors_name_the_problem() -> None:
    with pytest.raises(ImageError, match="must be uint8, got dtype float32"):
        preprocess(np.zeros((8, 8, 3), dtype=np.float32), 16)
    with pytest.raises(ImageError, match=r"HxW, HxWx3 or HxWx4, got shape \(8, 8, 2\)"):
        preprocess(np.zeros((8, 8, 2), dtype=np.uint8), 16)
    with pytest.raises(ImageError, match="got str"):
        preprocess("cat.png", 16)


def test_config_errors_name_the_field(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        tiny_config(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match=r"top_k \(9\) must be <= n_experts \(8\)"):
        tiny_config(top_k=9)
    with pytest.raises(ConfigError, match="n_layers must be a positive integer, got 0"):
        tiny_config(n_layers=0)
    with pytest.raises(ConfigError, match="stem_refine must be an integer >= 0, got -1"):
        tiny_config(stem_refine=-1)


def test_moe_layers_are_discoverable(model) -> None:
    layers = model.moe_layers()
    assert [m.moe_layer_index for m in layers] == [0, 1]
    assert all(
        m.n_experts == 8 and m.w_in.shape == (8, 32, 16) and m.w_out.shape == (8, 16, 32)
        for m in layers
    )
    assert all(m.router.weight.dtype == torch.float32 and m.dispatcher is None for m in layers)


def test_generation_reports_the_prompt_tokens(model, samples) -> None:
    from mmo_serving.engine.builtin_runner import ShapesRunner
    from mmo_serving.engine.types import GenerationRequest
    from mmo_serving.model.inference import encode_questions

    question = "is there a red circle in the image?"
    requests = [
        GenerationRequest(question, np.asarray(samples[0].image.convert("RGB")), 3),
        GenerationRequest(question, None, 3),
    ]
    results = ShapesRunner(model, TOK).generate(requests)
    _, valid = encode_questions(TOK, [question], model.config.max_text_len)
    text_tokens = int(valid.sum())
    assert text_tokens >= len(question.split())  # every word and the markers
    assert [r.prompt_tokens for r in results] == [
        text_tokens + model.config.n_image_tokens,
        text_tokens,
    ]


def test_framing_cuts_to_what_is_drawn() -> None:
    from mmo_serving.model.preprocess import FRAME_MARGIN, frame_of, preprocess_array

    img = Image.new("RGB", (400, 200), (20, 60, 200))
    ImageDraw.Draw(img).ellipse((300, 150, 320, 170), fill=(230, 30, 30))  # 20 px circle
    frame = frame_of(img)
    assert frame.background == (20, 60, 200)
    assert frame.side == math.ceil(21 * FRAME_MARGIN)
    assert frame.left <= 300 and frame.left + frame.side >= 321
    # the circle now fills most of the model's input instead of a few pixels
    arr = preprocess_array(img, 32).astype(int)
    red = (np.abs(arr - np.array([230, 30, 30])).sum(2) < 60).mean()
    assert red > 0.3
    # nothing drawn: the picture is only padded to a square
    blank = frame_of(Image.new("RGB", (40, 20), (255, 255, 255)))
    assert (blank.left, blank.top, blank.side) == (0, -10, 40)
    # a frame that leaves the picture is filled with the background colour
    corner = Image.new("RGB", (100, 100), (255, 255, 255))
    ImageDraw.Draw(corner).rectangle((0, 0, 9, 9), fill=(0, 150, 0))
    arr = preprocess_array(corner, 26)
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[13, 13]) == (0, 150, 0)
