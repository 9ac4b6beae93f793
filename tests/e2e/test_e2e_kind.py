"""End-to-end on kind: hack/kind-up.sh then hack/e2e-kind.sh (sample Ready, a question
answered, its metric in Prometheus). Runs only where kind and a Docker engine are present:
`docker info` must succeed (a client without an engine is not enough)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        proc = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def missing_tools() -> list[str]:
    return [tool for tool in ("kind", "kubectl", "helm") if shutil.which(tool) is None]


# make test does not install these: a kind cluster needs Docker, which the tests leave alone.
NOT_PROVIDED = "end-to-end on kind, not provided by make test"
pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(
        bool(missing_tools()),
        reason=f"{NOT_PROVIDED}: needs {', '.join(missing_tools())} on PATH",
    ),
    pytest.mark.skipif(
        not missing_tools() and not docker_engine_answers(),
        reason=f"{NOT_PROVIDED}: needs a running Docker engine (`docker info` failed)",
    ),
]


def run(script: str, *args: str, timeout: int) -> None:
    env = dict(os.environ, CLUSTER=os.environ.get("MMO_KIND_CLUSTER", "mmo-e2e"))
    proc = subprocess.run(
        [str(REPO / "hack" / script), *args], env=env, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{script} failed with exit code {proc.returncode}"


def test_kind_cluster_serves_a_sample_and_exports_metrics() -> None:
    run("kind-up.sh", timeout=3600)
    run("e2e-kind.sh", str(REPO / "manifests/samples/private-vqa.yaml"), timeout=3600)
