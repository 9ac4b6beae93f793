"""Update clipping and noise of a federated site (the Flower-independent part)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmo_serving.federated.dp import clip, global_norm, privatize

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(
    a=arrays(np.float32, st.integers(1, 20), elements=finite),
    b=arrays(np.float32, (3, 4), elements=finite),
    c=st.floats(1e-3, 10),
)
def test_clipped_norm_never_exceeds_bound(a: np.ndarray, b: np.ndarray, c: float) -> None:
    out, norm, scale = clip([a, b], c)
    assert global_norm(out) <= c * (1 + 1e-9)
    assert norm == pytest.approx(global_norm([a, b]))
    if norm <= c:  # small updates are untouched
        assert scale == 1.0
        np.testing.assert_allclose(out[0], a)


def test_noise_has_the_configured_std_and_seeded_determinism() -> None:
    update = [np.zeros((200, 100), np.float32), np.zeros(5000, np.float32)]
    p = privatize(update, clip_norm=2.0, noise_multiplier=1.5, rng=np.random.default_rng(0))
    flat = np.concatenate([x.ravel() for x in p.arrays])
    assert p.noise_std == 3.0
    assert float(flat.std()) == pytest.approx(3.0, rel=0.03)
    assert [x.shape for x in p.arrays] == [(200, 100), (5000,)]
    assert all(x.dtype == np.float32 for x in p.arrays)
    again = privatize(update, clip_norm=2.0, noise_multiplier=1.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(p.arrays[0], again.arrays[0])
    rng = np.random.default_rng(0)
    shared = privatize(update, clip_norm=2.0, noise_multiplier=1.5, rng=rng, shares=9)
    assert shared.noise_std == pytest.approx(1.0)


def test_large_update_is_clipped_before_noise() -> None:
    big = [np.full(100, 10.0)]
    p = privatize(big, clip_norm=1.0, noise_multiplier=0.0, rng=np.random.default_rng(1))
    assert p.norm_before == pytest.approx(100.0) and p.scale == pytest.approx(0.01)
    assert global_norm(p.arrays) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "clip_norm must be > 0, got 0.0"),
        ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier must be >= 0"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "shares": 0}, "shares must be >= 1"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        privatize([np.ones(3)], rng=np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]
