"""Fixtures for the operator tests against the strict API emulator."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kube_emulator import EmulatorThread
from operator_harness import (
    Cluster,
    OperatorProcess,
    kuberay_crd,
    mmm_crd,
    podmonitor_crd,
)


@pytest.fixture()
def emu() -> Iterator[EmulatorThread]:
    """A fresh strict emulator on a loopback port, in its own thread."""
    with EmulatorThread() as thread:
        yield thread


@pytest.fixture()
def cluster(emu: EmulatorThread) -> Cluster:
    """The emulator with the MultimodalModel, KubeRay and PodMonitor CRDs installed."""
    c = Cluster(emu)
    c.install(mmm_crd())
    c.install(kuberay_crd())
    c.install(podmonitor_crd())
    return c


@pytest.fixture()
def bare_cluster(emu: EmulatorThread) -> Cluster:
    """Only the MultimodalModel CRD: no KubeRay, no prometheus-operator."""
    c = Cluster(emu)
    c.install(mmm_crd())
    return c


@pytest.fixture()
def start_operator(emu: EmulatorThread, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start ``mmo operator`` subprocesses (stopped at teardown, logs shown on failure)."""
    kubeconfig = emu.write_kubeconfig(str(tmp_path / "kubeconfig"))
    procs: list[OperatorProcess] = []

    def start(
        *extra: str, env: dict[str, str] | None = None, webhook: bool = False
    ) -> OperatorProcess:
        log = tmp_path / f"operator-{len(procs)}.log"
        proc = OperatorProcess(kubeconfig, log, *extra, env=env, webhook=webhook)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
    for proc in procs:
        sys.stderr.write(f"--- {proc.log_path.name} (tail) ---\n{proc.log()[-6000:]}\n")
