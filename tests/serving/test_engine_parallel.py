"""ExpertParallelEngine on a local Ray with 8 logical GPUs (compute on the CPU, gloo).

The model is the built-in architecture (``mmo_serving.model``) with random tiny weights.
One 8-rank engine is shared by most tests of this module, in order: placement and
equality first, the live plan change last; the one- and two-rank engines run before it
(once started, it holds all 8 logical GPUs). Tolerance for float outputs (embeddings):
atol 1e-5 in float32 (expert rows are computed in other batch shapes on other ranks);
generated text must match exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import mmo_engine_toy as toy  # loaded by conftest.py
import numpy as np
import pytest
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mmo_serving.config import AppArgs
from mmo_serving.engine import EmbeddingRequest, ExpertParallelEngine, GenerationRequest
from mmo_serving.engine.builtin_runner import ModelSource
from mmo_serving.engine.experts import expert_leaves, leaf_tensor
from mmo_serving.engine.resources import (
    PLACEMENT_STRATEGY,
    placement_group_bundles,
    replica_actor_options,
)

ATOL = 1e-5


TINY = toy.TINY_SHAPES
MODEL = ModelSource("tiny://", tiny=TINY, seed=3)
FACTORY = toy.FailOn(MODEL)
BF16_TOY = toy.ToyFactory(experts=8, seed=2, dtype="bfloat16")

# Initial plan: 2 slots per GPU. Layer 0: every expert twice; layer 1: uneven copies.
PLAN_A = toy.plan_from_gpus(
    [
        [[g, (g + 3) % 8] for g in range(8)],
        [[0, 1], [0, 2], [0, 3], [1, 4], [1, 5], [2, 6], [3, 7], [4, 5]],
    ],
    experts=8,
)
# New plan: most experts move; layer 1 keeps one copy of each plus copies of 6 and 7.
PLAN_B = toy.plan_from_gpus(
    [
        [[(g + 5) % 8, (g + 1) % 8] for g in range(8)],
        [[7, 6], [6, 5], [5, 4], [4, 3], [3, 2], [2, 1], [1, 0], [0, 7]],
    ],
    experts=8,
)

_rng = np.random.default_rng(7)
IMAGES = [_rng.integers(0, 256, (s, s + 3, 3), dtype=np.uint8) for s in (32, 40, 57)]
PROMPTS = [
    ("what colour is the circle?", IMAGES[0], 6),
    ("how many shapes?", None, 1),
    ("is there a red square?", IMAGES[1], 8),
    ("what shape is blue?", IMAGES[2], 3),
]
# 11 requests over 8 ranks: three ranks get two, five get one; images on some ranks only,
# different max_new_tokens, so ranks run different numbers of decode steps
REQUESTS = [GenerationRequest(t, im, n) for t, im, n in (PROMPTS * 3)[:11]]
EMBED = [EmbeddingRequest(text=t) for t, _, _ in PROMPTS] + [
    EmbeddingRequest(image=im) for im in IMAGES
]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def reference() -> Any:
    return MODEL()


@pytest.fixture(scope="module")
def engine(ray_cluster: Any) -> Iterator[ExpertParallelEngine]:
    args = AppArgs(name="toy", model_source="toy://", num_gpus=8, placement=PLAN_A)
    eng = ExpertParallelEngine(args, FACTORY, rank_cpus=0.25)
    try:
        eng.wait_ready(timeout_s=300)
        yield eng
    finally:
        run(eng.close())


def reference_outputs(
    model: Any = MODEL, world: int = 8
) -> tuple[list[Any], list[list[float]], list[int]]:
    """The single-process model's answers to the whole batch, and the MoE rows
    (tokens x top_k) per layer it computes for the shards the engine gives each rank
    (a shard stops decoding when its own rows are done)."""
    reference = model()
    with torch.inference_mode():
        gen = reference.generate(REQUESTS)
        emb = reference.embed(EMBED)
    rows = toy.count_moe_rows(reference.model)
    with torch.inference_mode():
        for rank in range(world):
            reference.generate(REQUESTS[rank::world])
    return gen, emb, rows


def assert_held_as_planned(engine: ExpertParallelEngine, reference: Any, plan: Any) -> None:
    infos = run(engine.rank_info())
    sums = run(engine.expert_checksums())
    for info, rank_sums in zip(infos, sums, strict=True):
        r = info["rank"]
        want = [sorted(set(plan.experts_on_gpu(layer, r))) for layer in range(2)]
        assert [sorted(h) for h in info["heldExperts"]] == want
        assert info["stackSizes"] == [len(w) for w in want]  # the other experts are freed
        for layer, moe in enumerate(reference.model.moe_layers()):
            stack = leaf_tensor(expert_leaves(moe)[0])  # w_in, or its int8 qweight
            for e, s in rank_sums[layer].items():  # the right weights, not just the ids
                assert s == pytest.approx(float(stack[e].detach().double().sum()), abs=1e-9)


def test_one_rank_without_a_group(ray_cluster: Any) -> None:
    """Runs first: the module's 8-rank engine, once started, holds all 8 logical GPUs."""
    args = AppArgs(name="toy", model_source="toy://", num_gpus=1)
    eng = ExpertParallelEngine(args, FACTORY)
    try:
        [info] = eng.wait_ready(timeout_s=300)
        assert info["world"] == 1 and info["backend"] is None
        want_gen, _, rows = reference_outputs(world=1)
        assert run(eng.generate(REQUESTS)) == want_gen
        load = run(eng.expert_load())
        assert load.num_ranks == 1 and [load.rank_loads(i)[0] for i in range(2)] == rows
        [info] = run(eng.rank_info())
        assert len(info["gpuIds"]) == 1 and info["heldExperts"] == [list(range(8))] * 2
    finally:
        run(eng.close())


def test_ranks_join_the_replicas_placement_group(ray_cluster: Any) -> None:
    """Inside an actor scheduled like a Serve replica (bundle 0 of a STRICT_PACK group made
    from ``placement_group_bundles``), the ranks take the group's GPU bundles. The model
    is the toy in bfloat16 (expert ids then travel in a collective of their own)."""
    ray = ray_cluster
    pg = placement_group(placement_group_bundles(2), strategy=PLACEMENT_STRATEGY)
    ray.get(pg.ready(), timeout=60)
    args = AppArgs(name="toy", model_source="toy://", num_gpus=2)
    replica = (
        ray.remote(toy.ReplicaLike)
        .options(
            **replica_actor_options(),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_capture_child_tasks=True
            ),
        )
        .remote(args, BF16_TOY)
    )
    try:
        where = ray.get(replica.placement.remote(), timeout=300)
        assert where["mine"] == pg.id.hex() == where["engine"]
        assert where["ranks"] == [pg.id.hex()] * 2 and not where["ownsGroup"]
        assert len(set(where["gpus"])) == 2
        requests = [GenerationRequest(t, None, n) for t, _, n in PROMPTS]
        with torch.inference_mode():
            want = BF16_TOY().generate(requests)
        assert ray.get(replica.generate.remote(requests), timeout=300) == want
    finally:
        ray.get(replica.close.remote(), timeout=60)
        ray.kill(replica)
        remove_placement_group(pg)


def assert_health_check_fails(
    eng: ExpertParallelEngine, errors: tuple[type[Exception], ...]
) -> None:
    """``ray.kill`` only asks for the kill: a call sent in the next moment can still
    reach the rank, so the check is repeated (as Serve repeats it) until it fails."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            run(eng.check_health())
        except errors:
            return
        time.sleep(0.2)
    pytest.fail("the health check still passes 60 s after a rank was killed")


def test_two_ranks_int8_equal_and_replanned(ray_cluster: Any) -> None:
    """INT8 expert stacks (int8 weights + scales) are split and moved like float ones;
    a lost rank fails the health check."""
    int8 = ModelSource("tiny://", quantization="int8", tiny=TINY, seed=3)
    args = AppArgs(name="toy", model_source="toy://", num_gpus=2, quantization="int8")
    eng = ExpertParallelEngine(args, int8)
    try:
        infos = eng.wait_ready(timeout_s=300)
        assert [i["heldExperts"] for i in infos] == [[[0, 1, 2, 3]] * 2, [[4, 5, 6, 7]] * 2]
        want_gen, want_emb, _ = reference_outputs(int8)
        assert run(eng.generate(REQUESTS)) == want_gen
        new = toy.plan_from_gpus([[[4, 5, 6, 7, 0], [0, 1, 2, 3, 5]]] * 2, experts=8)
        pids = [i["pid"] for i in infos]
        run(eng.update_plan(new))
        assert [i["pid"] for i in run(eng.rank_info())] == pids
        assert_held_as_planned(eng, int8(), new)
        assert run(eng.generate(REQUESTS)) == want_gen
        emb = run(eng.embed(EMBED))
        np.testing.assert_allclose(np.array(emb), np.array(want_emb), atol=ATOL, rtol=0)
        run(eng.check_health())
        ray_cluster.kill(eng.ranks[1])
        assert_health_check_fails(eng, (ray_cluster.exceptions.RayActorError, TimeoutError))
    finally:
        run(eng.close())


def test_eight_ranks_on_eight_distinct_gpus(engine: ExpertParallelEngine) -> None:
    infos = run(engine.rank_info())
    assert [i["rank"] for i in infos] == list(range(8))
    assert all(i["world"] == 8 and i["backend"] == "gloo" for i in infos)
    gpu_ids = [tuple(i["gpuIds"]) for i in infos]
    assert all(len(g) == 1 for g in gpu_ids) and len(set(gpu_ids)) == 8
    assert len({tuple(i["acceleratorIds"]) for i in infos}) == 8
    assert len({i["pid"] for i in infos}) == 8
    assert len({i["denseChecksum"] for i in infos}) == 1  # dense weights replicated


def test_plan_honoured(engine: ExpertParallelEngine, reference: Any) -> None:
    assert_held_as_planned(engine, reference, PLAN_A)


def test_outputs_equal_single_process_and_tokens_counted_where_held(
    engine: ExpertParallelEngine,
) -> None:
    want_gen, want_emb, rows = reference_outputs()
    before = run(engine.expert_load())
    got = run(engine.generate(REQUESTS))
    after = run(engine.expert_load())
    assert got == want_gen
    assert after.num_ranks == 8 and after.num_experts == 8 and after.num_layers == 2
    for layer in range(2):
        delta = np.array(after.tokens[layer]) - np.array(before.tokens[layer])  # [expert, rank]
        assert delta.sum() == rows[layer] > 0  # tokens * top_k, each pair counted once
        for e, r in zip(*np.nonzero(delta), strict=True):
            assert e in PLAN_A.experts_on_gpu(layer, int(r)), (layer, e, r)
        # copies share the work: an expert with several copies is computed on several ranks
        busy = [e for e in range(8) if delta[e].sum() >= 4 and PLAN_A.layers[layer].replicas[e] > 1]
        assert any(np.count_nonzero(delta[e]) > 1 for e in busy)
    emb = run(engine.embed(EMBED))
    np.testing.assert_allclose(np.array(emb), np.array(want_emb), atol=ATOL, rtol=0)


def test_error_on_one_rank_fails_the_batch_without_hanging_the_group(
    engine: ExpertParallelEngine,
) -> None:
    bad = [GenerationRequest("ok", max_new_tokens=2), GenerationRequest(toy.FAIL)]
    with pytest.raises(Exception, match="toy failure on purpose"):
        run(engine.generate(bad))
    assert len(run(engine.generate(REQUESTS[:3]))) == 3  # the group still works


def test_bad_plan_is_refused_before_reaching_ranks(engine: ExpertParallelEngine) -> None:
    wrong = toy.plan_from_gpus([[[g] for g in range(8)]], experts=8)
    with pytest.raises(ValueError, match=r"covers MoE layers \[0\]; the model has 2 MoE layers"):
        run(engine.update_plan(wrong))


def test_new_plan_applied_without_restarting_ranks(
    engine: ExpertParallelEngine, reference: Any
) -> None:
    ids_before = [(i["actorId"], i["pid"]) for i in run(engine.rank_info())]
    run(engine.update_plan(PLAN_B))
    ids_after = [(i["actorId"], i["pid"]) for i in run(engine.rank_info())]
    assert ids_after == ids_before
    assert_held_as_planned(engine, reference, PLAN_B)
    load = run(engine.expert_load())
    assert load.plan_version == 1 and load.total(window=True) == 0 and load.total() > 0
    want_gen, want_emb, _ = reference_outputs()
    assert run(engine.generate(REQUESTS)) == want_gen
    np.testing.assert_allclose(np.array(run(engine.embed(EMBED))), want_emb, atol=ATOL, rtol=0)
    load = run(engine.expert_load())
    for layer in range(2):
        window = np.array(load.window[layer])
        for e, r in zip(*np.nonzero(window), strict=True):
            assert e in PLAN_B.experts_on_gpu(layer, int(r)), (layer, e, r)
        assert load.balancedness(layer) >= 1.0
