"""The synthetic shapes task: determinism, consistency of answers, tokenizer coverage."""

from __future__ import annotations

import numpy as np
import pytest

from mmo_serving.model import tasks
from mmo_serving.model.tokenizer import TokenizerError, WordTokenizer, default_tokenizer


def test_same_arguments_give_the_same_sample() -> None:
    a = tasks.make_sample(7, seed=3)
    b = tasks.make_sample(7, seed=3)
    assert a.scene == b.scene
    assert a.qas == b.qas
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_index_seed_and_split_change_the_sample() -> None:
    base = tasks.make_sample(7, seed=3).scene
    assert tasks.make_sample(8, seed=3).scene != base
    assert tasks.make_sample(7, seed=4).scene != base
    assert tasks.make_sample(7, seed=3, split="test").scene != base


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'; valid: train, val, test"):
        tasks.make_sample(0, split="dev")


def test_scenes_cover_the_issue_ranges() -> None:
    samples = list(tasks.iter_samples(300, seed=1))
    sizes = [s.image.size for s in samples]
    assert all(32 <= w <= 512 and 32 <= h <= 512 for w, h in sizes)
    assert min(w for w, _ in sizes) < 64 and max(w for w, _ in sizes) > 300
    assert any(w != h for w, h in sizes)
    backgrounds = {s.scene.background for s in samples}
    assert len(backgrounds) > 50  # arbitrary plain backgrounds, not a fixed few
    colours = {sh.colour for s in samples for sh in s.scene.shapes}
    kinds = {sh.kind for s in samples for sh in s.scene.shapes}
    assert colours == set(tasks.COLOURS) and kinds == set(tasks.SHAPES)
    counts = {len(s.scene.shapes) for s in samples}
    assert counts == {1, 2, 3, 4}
    smallest = min(sh.radius / max(s.image.size) for s in samples for sh in s.scene.shapes)
    assert smallest < 0.07  # small shapes on a large canvas, not only big ones
    assert {qa.kind for s in samples for qa in s.qas} == set(tasks.QUESTION_KINDS)


def test_answers_agree_with_the_scene() -> None:
    for s in tasks.iter_samples(200, seed=2):
        shapes = s.scene.shapes
        assert len({sh.colour for sh in shapes}) == len(shapes)  # colours are distinct
        for qa in s.qas:
            words = qa.question.rstrip("?.").split()
            if qa.kind == "colour":
                kind = next(w for w in words if w in tasks.SHAPES)
                (match,) = [sh for sh in shapes if sh.kind == kind]
                assert qa.answer == match.colour
            elif qa.kind == "shape":
                colour = next(w for w in words if w in tasks.COLOURS)
                assert qa.answer == next(sh.kind for sh in shapes if sh.colour == colour)
            elif qa.kind == "count":
                assert qa.answer == tasks.COUNT_WORDS[len(shapes)]
            else:
                colour = next((w for w in words if w in tasks.COLOURS), None)
                kind = next((w for w in words if w in tasks.SHAPES), None)
                present = any(
                    (colour is None or sh.colour == colour) and (kind is None or sh.kind == kind)
                    for sh in shapes
                )
                assert qa.answer == ("yes" if present else "no")


def test_shape_pixels_have_the_shape_colour() -> None:
    scene = tasks.generate_scene(np.random.default_rng(5), augment=False)
    img = np.asarray(tasks.render(scene))
    for sh in scene.shapes:
        assert tuple(img[int(sh.cy), int(sh.cx)]) == sh.rgb


def test_caption_is_canonical() -> None:
    a = tasks.caption_for([("blue", "square"), ("red", "circle")])
    b = tasks.caption_for([("red", "circle"), ("blue", "square")])
    assert a == b == "a red circle and a blue square"


def test_tokenizer_covers_the_task_and_round_trips(tmp_path) -> None:
    tok = default_tokenizer()
    for s in tasks.iter_samples(50):
        for qa in s.qas:
            assert tok.unk_id not in tok.encode(qa.question)
            assert tok.decode(tok.encode(qa.answer)) == qa.answer
        assert tok.unk_id not in tok.encode(s.caption)
    tok.save(tmp_path / "tokenizer.json")
    again = WordTokenizer.load(tmp_path / "tokenizer.json")
    assert again.vocab == tok.vocab
    assert tok.encode("What COLOR is the zebra?")[-1] == tok.unk_id
    assert tok.encode("is there an orange circle?") == tok.encode("is there a orange circle?")


def test_tokenizer_file_errors(tmp_path) -> None:
    p = tmp_path / "tokenizer.json"
    p.write_text("{not json")
    with pytest.raises(TokenizerError, match="invalid JSON"):
        WordTokenizer.load(p)
    p.write_text('{"format": "other"}')
    with pytest.raises(TokenizerError, match="not an mmo word tokenizer"):
        WordTokenizer.load(p)
    p.write_text('{"format": "mmo-word-tokenizer", "vocab": ["a", "b"]}')
    with pytest.raises(TokenizerError, match="must start with the special tokens"):
        WordTokenizer.load(p)
