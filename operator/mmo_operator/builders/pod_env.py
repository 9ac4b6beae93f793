"""The environment every container of a model's pods starts with (pure).

One place builds it: the offline set of every isolation mode (no hub, no downloads, no
usage statistics), mmo's own settings, and what the vLLM engine needs beyond them. Secrets
(hybrid API key, S3 credentials) are added by the RayService builder on the workers only.
"""

from __future__ import annotations

from mmo_operator.api.v1alpha1 import MultimodalModel, engine_of
from mmo_serving.metrics import METRICS_REPORT_INTERVAL_MS

from .common import Obj

# Every container of every mode: no hub, no downloads, no telemetry.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "WANDB_MODE": "disabled",
    "GRADIO_ANALYTICS_ENABLED": "False",
    # no package index: a runtime_env pip/uv install cannot pull code at run time
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
}

BASE_ENV: dict[str, str] = {
    # the audit lines reach the log as they are written
    "PYTHONUNBUFFERED": "1",
    # gauges must reach the node agent between two scrapes (mmo_serving.metrics)
    "RAY_metrics_report_interval_ms": str(METRICS_REPORT_INTERVAL_MS),
}

# How long vLLM's front end waits for its engine cores to report ready: reading the
# weights from the volume, torch.compile and CUDA-graph capture. vLLM's default of 600 s
# is less than a 300-400 GB MoE checkpoint takes to read at the 0.5-1 GB/s a network
# volume gives; past it the replica fails and Serve starts the whole load again.
VLLM_ENGINE_READY_TIMEOUT_S = 1800

# No NCCL variables are set: on one node NCCL picks NVLink/PCIe peer-to-peer itself and
# falls back to its shared-memory transport, which needs a large /dev/shm (the worker
# template sizes it), not a setting. NCCL_CUMEM_ENABLE stays at NCCL's default, which
# vLLM 0.29 does not override either.
VLLM_ENV: dict[str, str] = {
    "VLLM_ENGINE_READY_TIMEOUT_S": str(VLLM_ENGINE_READY_TIMEOUT_S),
    # vLLM's own switch; it also reads DO_NOT_TRACK (OFFLINE_ENV sets both)
    "VLLM_DO_NOT_TRACK": "1",
}


def base_env(model: MultimodalModel) -> list[Obj]:
    """Environment entries for every container of the model's pods (no secrets)."""
    env = {**OFFLINE_ENV, **BASE_ENV}
    if engine_of(model.spec) == "vllm":
        env.update(VLLM_ENV)
    return [{"name": k, "value": v} for k, v in env.items()]
