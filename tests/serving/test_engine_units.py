"""Engine pieces without Ray: request types, resources, routing, LocalEngine."""

from __future__ import annotations

import asyncio

import mmo_engine_toy as toy  # loaded by conftest.py
import numpy as np
import pytest
import torch

from mmo_serving.config import AppArgs
from mmo_serving.engine import (
    EmbeddingRequest,
    ExpertLoad,
    GenerationRequest,
    GenerationResult,
    LocalEngine,
)
from mmo_serving.engine.builtin_runner import ModelSource
from mmo_serving.engine.experts import find_moe_layers
from mmo_serving.engine.resources import (
    placement_group_bundles,
    rank_bundles,
    replica_actor_options,
)
from mmo_serving.engine.routing import (
    contiguous_plan,
    layer_routes,
    moved_experts,
    transfer_sources,
    validate_plan,
)


# -- request types -------------------------------------------------------------------
def test_generation_request_checks_fields() -> None:
    img = np.zeros((4, 5, 3), dtype=np.uint8)
    assert GenerationRequest("hi", img, 3).image is img
    with pytest.raises(ValueError, match=r"max_new_tokens: expected an int in \[1, 512\], got 0"):
        GenerationRequest("hi", None, 0)
    with pytest.raises(ValueError, match=r"max_new_tokens.*got True"):
        GenerationRequest("hi", None, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"GenerationRequest\.text: expected str, got int"):
        GenerationRequest(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"GenerationRequest\.image: expected dtype uint8"):
        GenerationRequest("hi", np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected shape HxWx3 \(RGB\), got \(4, 4\)"):
        GenerationRequest("hi", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected a numpy uint8 HxWx3 array, got list"):
        GenerationRequest("hi", [[1]])  # type: ignore[arg-type]


def test_embedding_request_needs_exactly_one_input() -> None:
    EmbeddingRequest(text="a")
    EmbeddingRequest(image=np.zeros((2, 2, 3), dtype=np.uint8))
    for bad in ({}, {"text": "a", "image": np.zeros((2, 2, 3), dtype=np.uint8)}):
        with pytest.raises(ValueError, match="exactly one of text or image"):
            EmbeddingRequest(**bad)


def test_expert_load_balancedness_and_loads_json() -> None:
    # 1 layer, 2 experts, 2 ranks: expert 0 on rank 0 (30 tokens), expert 1 on rank 1 (10).
    load = ExpertLoad(1, 2, 2, tokens=[[[30, 0], [0, 10]]], window=[[[3, 0], [0, 1]]])
    assert load.rank_loads(0) == [3, 1]
    assert load.balancedness(0) == pytest.approx(1.5)
    assert load.balancedness(0, window=False) == pytest.approx(1.5)
    assert load.to_loads_json() == {"layers": [[30, 10]]}
    assert load.total() == 40
    idle = ExpertLoad(1, 2, 2, tokens=[[[0, 0], [0, 0]]], window=[[[0, 0], [0, 0]]])
    assert idle.balancedness_per_layer() == [1.0]
    assert load.to_json_dict()["balancedness"] == [pytest.approx(1.5)]


# -- resources -----------------------------------------------------------------------
def test_bundles_one_gpu_each_and_replica_only_fits_bundle_zero() -> None:
    bundles = placement_group_bundles(8, rank_cpus=0.25, replica_cpus=0.5)
    assert len(bundles) == 8 and all(b["GPU"] == 1 for b in bundles)
    assert bundles[0]["CPU"] == 0.75 and all(b["CPU"] == 0.25 for b in bundles[1:])
    replica = replica_actor_options(0.5)
    assert replica == {"num_cpus": 0.5, "num_gpus": 0}
    assert [b["CPU"] >= replica["num_cpus"] for b in bundles] == [True] + [False] * 7
    assert rank_bundles(2, 0.0) == [{"GPU": 1.0}, {"GPU": 1.0}]
    with pytest.raises(ValueError, match="num_gpus: expected an int >= 1, got 0"):
        rank_bundles(0)
    with pytest.raises(ValueError, match="CPU counts must be >= 0"):
        placement_group_bundles(2, rank_cpus=-1)


# -- routing -------------------------------------------------------------------------
def test_contiguous_plan_places_every_expert_once() -> None:
    plan = contiguous_plan(num_layers=2, num_experts=10, num_gpus=4)
    assert plan.slots_per_gpu == 3
    routes = layer_routes(plan)
    assert routes[0].local_experts == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert routes[1].copies[9] == [(3, 0)]
    assert plan.layers[0].balancedness == pytest.approx(3 / 2.5)
    validate_plan(plan, num_layers=2, num_experts=10, world=4)


def test_validate_plan_says_what_is_wrong() -> None:
    plan = toy.plan_from_gpus([[[0, 1], [2, 3]]], experts=4)
    validate_plan(plan, num_layers=1, num_experts=4, world=2)
    with pytest.raises(ValueError, match=r"placement\.numGpus=2 but the engine has 4 ranks"):
        validate_plan(plan, num_layers=1, num_experts=4, world=4)
    with pytest.raises(ValueError, match="numExperts=4 but the model has 8 experts"):
        validate_plan(plan, num_layers=1, num_experts=8, world=2)
    with pytest.raises(ValueError, match=r"covers MoE layers \[0\]; the model has 2 MoE layers"):
        validate_plan(plan, num_layers=2, num_experts=4, world=2)
    missing = toy.plan_from_gpus([[[0, 1], [2, 2]]], experts=4)
    with pytest.raises(ValueError, match=r"slots \(layer 0\): experts \[3\] have no slot"):
        validate_plan(missing, num_layers=1, num_experts=4, world=2)
    wrong = plan.model_copy(deep=True)
    wrong.layers[0].replicas = [2, 1, 1, 1]
    with pytest.raises(ValueError, match=r"replicas\[0\]=2 but expert 0 holds 1 slots"):
        validate_plan(wrong, num_layers=1, num_experts=4, world=2)


def test_copies_and_transfer_sources() -> None:
    old = layer_routes(toy.plan_from_gpus([[[0, 1], [2, 3], [0, 2]]], experts=4))[0]
    assert old.copies[0] == [(0, 0), (2, 0)] and old.holders(2) == [1, 2]
    new = layer_routes(toy.plan_from_gpus([[[0, 3], [2, 1], [0, 1]]], experts=4))[0]
    # rank 0 needs 3 (only rank 1 has it); rank 1 needs 1 (rank 0); rank 2 needs 1 (rank 0)
    assert transfer_sources(old, new) == {(0, 3): 1, (1, 1): 0, (2, 1): 0}
    assert moved_experts(old, new) == 3
    assert moved_experts(old, old) == 0


# -- LocalEngine ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_engine() -> LocalEngine:
    args = AppArgs(name="toy", model_source="toy://", num_gpus=1)
    return LocalEngine(args, toy.ToyFactory(), threads=1)


REQUESTS = [GenerationRequest(t, max_new_tokens=n) for t, n in [("hello", 5), ("ab c", 2)]]


def test_local_engine_equals_single_process_model(local_engine: LocalEngine) -> None:
    ref = toy.ToyFactory()()
    rows = toy.count_moe_rows(ref.model)
    with torch.inference_mode():
        want = ref.generate(REQUESTS)
    before = asyncio.run(local_engine.expert_load())
    got = asyncio.run(local_engine.generate(REQUESTS))
    after = asyncio.run(local_engine.expert_load())
    assert got == want and all(isinstance(r, GenerationResult) for r in got)
    # every (token, expert) pair of every MoE call is counted once, on rank 0
    for layer in range(after.num_layers):
        added = after.rank_loads(layer, window=False)[0] - before.rank_loads(layer, window=False)[0]
        assert added == rows[layer] > 0
    with torch.inference_mode():
        want_emb = ref.embed([EmbeddingRequest(text="a cat")])
    emb = asyncio.run(local_engine.embed([EmbeddingRequest(text="a cat")]))
    np.testing.assert_allclose(emb, want_emb, atol=1e-5, rtol=0)


def test_local_engine_error_then_recovers(local_engine: LocalEngine) -> None:
    with pytest.raises(RuntimeError, match="toy failure on purpose"):
        asyncio.run(local_engine.generate([GenerationRequest(toy.FAIL)]))
    assert asyncio.run(local_engine.generate(REQUESTS[:1]))[0].tokens == 5


def test_local_engine_update_plan(local_engine: LocalEngine) -> None:
    with pytest.raises(ValueError, match=r"placement\.numGpus=2 but the engine has 1 ranks"):
        asyncio.run(local_engine.update_plan(contiguous_plan(2, 8, 2)))
    asyncio.run(local_engine.update_plan(contiguous_plan(2, 8, 1)))
    load = asyncio.run(local_engine.expert_load())
    assert load.plan_version == 1 and load.total(window=True) == 0 and load.total() > 0
    info = asyncio.run(local_engine.rank_info())[0]
    assert info["heldExperts"] == [list(range(8))] * 2 and info["backend"] is None


def test_local_engine_refuses_several_gpus() -> None:
    args = AppArgs(name="toy", model_source="toy://", num_gpus=2)
    with pytest.raises(ValueError, match="LocalEngine runs one rank; numGpus=2"):
        LocalEngine(args, toy.ToyFactory())


# -- the built-in model through LocalEngine --------------------------------------------
TINY = toy.TINY_SHAPES


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_local_engine_runs_the_builtin_architecture(quantization: str) -> None:
    source = ModelSource("tiny://", quantization=quantization, tiny=TINY, seed=5)
    img = np.random.default_rng(1).integers(0, 256, (36, 33, 3), dtype=np.uint8)
    reqs = [
        GenerationRequest("what colour is the circle?", img, 4),
        GenerationRequest("hi", None, 2),
    ]
    embs = [EmbeddingRequest(text="a red circle"), EmbeddingRequest(image=img)]
    ref = source()
    want, want_emb = ref.generate(reqs), ref.embed(embs)
    args = AppArgs(name="t", model_source="tiny://", num_gpus=1, quantization=quantization)
    engine = LocalEngine(args, source)
    assert asyncio.run(engine.generate(reqs)) == want
    np.testing.assert_allclose(asyncio.run(engine.embed(embs)), want_emb, atol=1e-5, rtol=0)
    assert asyncio.run(engine.expert_load()).total() > 0


def test_model_source_refuses_unknown_quantization() -> None:
    with pytest.raises(
        ValueError, match="quantization='int4': this model supports 'none' and 'int8'"
    ):
        ModelSource("tiny://", quantization="int4", tiny=TINY)()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_model_source_applies_the_dtype(dtype: str) -> None:
    """The shipped model in a half-precision dtype gives the float32 answers."""
    from mmo_serving.model import tasks

    args = AppArgs(name="t", model_source="builtin://shapes-moe", dtype=dtype)
    half = ModelSource.from_args(args)()
    full = ModelSource("builtin://shapes-moe")()
    assert {p.dtype for p in half.model.parameters()} == {getattr(torch, dtype)}
    samples = list(tasks.iter_samples(10, seed=77, split="test"))
    requests = [
        GenerationRequest(qa.question, np.asarray(s.image.convert("RGB")), 3)
        for s in samples
        for qa in s.qas
    ]
    got, want = half.generate(requests), full.generate(requests)
    assert [g.text for g in got] == [w.text for w in want]
    embedding = half.embed([EmbeddingRequest(text="a red circle")])[0]
    reference = full.embed([EmbeddingRequest(text="a red circle")])[0]
    np.testing.assert_allclose(embedding, reference, atol=0.05)


def test_model_source_refuses_an_unknown_dtype() -> None:
    with pytest.raises(
        ValueError, match="dtype='int2': valid dtypes are float32, bfloat16, float16"
    ):
        ModelSource("tiny://", tiny=TINY, dtype="int2")()


def test_moe_layers_must_be_numbered_from_zero() -> None:
    model = toy.ToyLM(8, 8, 4, 2, 2)
    find_moe_layers(model)
    model.moe[1].moe_layer_index = 5
    with pytest.raises(ValueError, match=r"moe_layer_index \[0, 5\], expected 0..1"):
        find_moe_layers(model)
    with pytest.raises(ValueError, match="the model has no MoE layer"):
        find_moe_layers(torch.nn.Linear(2, 2))


def test_ranks_with_different_dense_weights_are_refused() -> None:
    from mmo_serving.engine.parallel import ExpertParallelEngine

    engine = ExpertParallelEngine.__new__(ExpertParallelEngine)
    same = [{"rank": r, "denseChecksum": 1.5} for r in range(3)]
    assert engine._check(same) == same
    with pytest.raises(RuntimeError, match="rank 2 loaded different dense weights"):
        engine._check([*same[:2], {"rank": 2, "denseChecksum": 1.25}])
