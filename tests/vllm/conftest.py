"""The vLLM tests run their engine side in ``.venv-vllm`` (``make vllm-venv``).

vLLM's CPU build pins its own torch companions and cannot share the main venv; the
tests here run as the main venv's pytest and drive scripts (``run_*.py``) executed by
``.venv-vllm/bin/python``. The ``vllm_venv`` fixture (tests/conftest.py) creates the venv
when missing, as the Makefile target does; a venv that cannot be built fails the tests
(never a silent skip).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def run_script(
    python: Path, script: str, work: Path, *args: str, timeout: float = 900
) -> dict[str, Any]:
    """Run ``tests/vllm/<script>`` with ``python`` (.venv-vllm's) in its own process group;
    it writes ``result.json`` into ``work``. Everything it started is killed on the way
    out."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # Serve's 5 s proxy readiness check fails on a busy 2-core machine, and Serve
        # then kills the proxy that serve.start is waiting for.
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    }
    log = work / f"{Path(script).stem}.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [str(python), str(HERE / script), str(work), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    result = work / "result.json"
    tail = log.read_text(errors="replace")[-6000:]
    assert proc.returncode == 0 and result.is_file(), f"{script} failed:\n{tail}"
    return dict(json.loads(result.read_text()))


RunScript = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def vllm_run(vllm_venv: Path) -> RunScript:
    """:func:`run_script` with .venv-vllm's python, once the venv is usable."""
    return functools.partial(run_script, vllm_venv / "bin" / "python")
