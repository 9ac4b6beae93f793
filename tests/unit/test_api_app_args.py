"""AppArgs built from a MultimodalModel: what the operator and `mmo up` hand to serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mmo_operator.api.v1alpha1 import Batching
from mmo_operator.builders.app_args import (
    batching_args,
    build_app_args,
    model_version,
    plan_and_app_args,
)
from mmo_operator.validation import validate_file
from mmo_serving.config import MAX_BATCH_SIZE, MAX_BATCH_WAIT_S, AppArgs, BatchingArgs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deepseek():
    return validate_file(ROOT / "manifests/samples/deepseek-v3-int4.yaml")


def test_app_args_follow_the_spec(deepseek) -> None:
    plan, args = plan_and_app_args(deepseek)
    assert args.name == "deepseek-v3-int4"
    assert args.quantization == "awq-int4"
    assert args.num_gpus == 8
    assert args.batching.max_batch_size == 16
    assert args.batching.batch_wait_timeout_s == pytest.approx(0.02)
    assert args.placement == plan
    assert plan.num_experts == 256 and len(plan.layers) == 58
    assert args.isolation.mode == "private" and args.isolation.hybrid is None


def test_app_args_round_trip_as_json(deepseek) -> None:
    _, args = plan_and_app_args(deepseek)
    data = args.to_json_dict()
    assert "numGpus" in data and "placement" in data
    assert AppArgs.model_validate(data) == args


def test_batching_reaches_the_replica_field_by_field() -> None:
    """The API's defaults and limits are the replica's: one definition, copied by name."""
    assert batching_args(Batching()) == BatchingArgs()
    assert batching_args(Batching(max_batch_size=3, batch_wait_timeout_ms=250)) == BatchingArgs(
        max_batch_size=3, batch_wait_timeout_s=0.25
    )
    most = Batching(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_ms=MAX_BATCH_WAIT_S * 1000)
    assert batching_args(most) == BatchingArgs(
        max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=MAX_BATCH_WAIT_S
    )
    with pytest.raises(ValidationError):
        Batching(max_batch_size=MAX_BATCH_SIZE + 1)


def test_a_batching_field_the_replica_lacks_is_refused() -> None:
    class Wider(Batching):
        max_queue: int = 4

    with pytest.raises(ValidationError, match="max_queue"):
        batching_args(Wider())


def test_model_version_changes_with_weights_only(deepseek) -> None:
    m = deepseek.model
    v0 = model_version(m)
    batching = m.model_copy(deep=True)
    batching.spec.batching.max_batch_size = 64
    assert model_version(batching) == v0
    quant = m.model_copy(deep=True)
    quant.spec.model.quantization = "int8"
    assert model_version(quant) != v0


def test_hybrid_settings_reach_the_gateway() -> None:
    from mmo_operator.api.parse import parse_model, read_file

    model = parse_model(read_file(ROOT / "manifests/samples/hybrid-vqa.yaml"))
    args = build_app_args(model, None)
    assert args.isolation.mode == "hybrid"
    assert args.isolation.hybrid is not None
    assert args.isolation.hybrid.endpoint == "https://llm.example.com/v1"
    assert args.isolation.hybrid.offload_data_classes == ["public", "internal"]
    assert args.isolation.hybrid.queue_threshold == 16  # the API's default
    assert args.isolation.default_data_class == "internal" and args.isolation.images_sensitive

    doc = read_file(ROOT / "manifests/samples/hybrid-vqa.yaml")
    iso = doc["spec"]["isolation"]
    iso.update(defaultDataClass="sensitive", imagesSensitive=False)
    iso["hybrid"]["offloadQueueThreshold"] = 0
    args = build_app_args(parse_model(doc), None)
    assert args.isolation.default_data_class == "sensitive"
    assert args.isolation.images_sensitive is False
    assert args.isolation.hybrid is not None and args.isolation.hybrid.queue_threshold == 0


def test_placement_must_match_gpu_count(deepseek) -> None:
    _, args = plan_and_app_args(deepseek)
    with pytest.raises(ValueError, match=r"placement\.numGpus=8 but numGpus=4"):
        AppArgs.model_validate({**args.to_json_dict(), "numGpus": 4})


def test_max_request_bytes_follows_spec_serving(deepseek) -> None:
    m = deepseek.model.model_copy(deep=True)
    assert build_app_args(m, None).max_request_bytes == 16 * 1024 * 1024  # the default
    m.spec.serving.max_request_bytes = 65536
    assert build_app_args(m, None).max_request_bytes == 65536
