"""A real Flower federation on loopback: SuperLink + 3 SuperNodes + ``flwr run``.

Flower cannot share the serving venv (its FastAPI/Starlette pins break Ray Serve), so
the federation runs with ``.venv-federated`` (created here when missing, as by
``make federated-venv``) as subprocesses; this process (the main venv) only reads what
they wrote and measures the result itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-federated"
PY = VENV / "bin" / "python"
SITES = 3
ROUNDS = 3
CLIP = 0.5
# The utility test needs a noise level the signal of 3 sites x 3 rounds survives (the
# admission minimum 0.5 is meant for federations of many sites and rounds): std 0.01.
NOISE = 0.02
NETWORK_ERRORS = (
    "Could not find a version",
    "Temporary failure",
    "Network is unreachable",
    "Connection refused",
    "No matching distribution",
    "Max retries",
)


def _usable() -> bool:
    if not (VENV / "bin" / "flwr").exists():
        return False
    probe = subprocess.run(
        [str(PY), "-c", "import flwr, mmo_serving; print(mmo_serving.__file__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.strip().startswith(str(ROOT))


def ensure_venv() -> None:
    """``make federated-venv``, plus a reinstall when the venv points at another checkout."""
    if _usable():
        return
    steps = []
    if not PY.exists():
        steps.append([sys.executable, "-m", "venv", str(VENV)])
    steps += [
        [str(PY), "-m", "pip", "install", "--quiet", "torch==2.13.0"],
        [str(PY), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[federated]"],
    ]
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if res.returncode != 0:
            out = (res.stdout + res.stderr)[-3000:]
            hint = " (no package index reachable?)" if any(e in out for e in NETWORK_ERRORS) else ""
            pytest.fail(f"cannot create .venv-federated{hint}: {' '.join(cmd)} failed:\n{out}")
    assert _usable(), ".venv-federated was created but cannot import flwr and this mmo"


def _model_source() -> str:
    shipped = ROOT / "serving" / "mmo_serving" / "assets" / "shapes-moe" / "model.safetensors"
    return "builtin://shapes-moe" if shipped.is_file() else "random://0"


def _kill_recorded(work: Path) -> None:
    pgids = work / "pgids.txt"
    if not pgids.is_file():
        return
    for line in pgids.read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(line), signal.SIGKILL)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ensure_venv()
    work = tmp_path_factory.mktemp("federation")
    source = _model_source()
    cmd = [
        str(PY),
        "-m",
        "mmo_serving.federated",
        "local",
        str(work),
        "--sites",
        str(SITES),
        "--timeout",
        "240",
        "-c",
        f"model-source={source}",
        "-c",
        "head-init=zeros",
        "-c",
        f"num-rounds={ROUNDS}",
        "-c",
        f"min-clients={SITES}",
        "-c",
        f"clip-norm={CLIP}",
        "-c",
        f"noise-multiplier={NOISE}",
        "-c",
        "scenes-per-site=100",
        "-c",
        "local-epochs=2",
        "-c",
        "lr=0.01",
    ]
    runner = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = runner.communicate(timeout=300)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        _kill_recorded(work)  # no-op when the runner cleaned up itself
    logs = "".join(
        f"\n== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in work.glob("*.log")
    )
    assert runner.returncode == 0, f"federation failed:\n{out}\n{err}{logs}"
    return {"work": work, "out": work / "out", "sites": work / "site-logs", "source": source}


def _head(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _live_members(pgid: int) -> list[str]:
    """Processes of a group that still run (zombies are dead: they only await reaping)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(text[: text.rindex(")") + 1])
    return live


def test_no_process_left(federation: dict[str, Any]) -> None:
    pgids = [int(x) for x in (federation["work"] / "pgids.txt").read_text().split()]
    assert len(pgids) == 1 + SITES
    for pgid in pgids:
        assert _live_members(pgid) == []


def test_held_out_accuracy_improves(federation: dict[str, Any]) -> None:
    from mmo_serving.federated import data, head

    before = _head(federation["out"] / "initial.npz")
    after = _head(federation["out"] / "final.npz")
    model, tok = head.load_base(federation["source"])
    items = data.held_out_items(80)
    feats = head.features(model, tok, items)
    labels = np.array([it.label for it in items])
    acc_before = head.accuracy(before, feats, labels)
    acc_after = head.accuracy(after, feats, labels)
    majority = float(np.bincount(labels).max() / len(labels))
    print(f"held-out accuracy {acc_before:.3f} -> {acc_after:.3f} (majority {majority:.3f})")
    assert acc_after >= acc_before + 0.05, (acc_before, acc_after)


def test_only_head_shaped_updates_cross(federation: dict[str, Any]) -> None:
    initial = _head(federation["out"] / "initial.npz")
    expected = {k: [list(v.shape), str(v.dtype)] for k, v in initial.items()}
    arrivals = [
        json.loads(line) for line in (federation["out"] / "arrivals.jsonl").read_text().splitlines()
    ]
    assert len(arrivals) == SITES * ROUNDS
    assert {a["round"] for a in arrivals} == set(range(1, ROUNDS + 1))
    assert len({a["node"] for a in arrivals}) == SITES
    for a in arrivals:
        assert a["accepted"], a
        assert a["records"] == ["arrays", "metrics"]
        assert a["arrays"] == {"arrays": expected}
        assert a["metrics"] == {"metrics": ["weight"]}
        assert a["configs"] == []
    # what each site says it sent is what arrived
    for path in federation["sites"].glob("site-*.jsonl"):
        for line in path.read_text().splitlines():
            assert json.loads(line)["sent"] == expected
    # a drawing alone (48x48x3 after preprocessing) is larger than everything a site sent
    sent_numbers = sum(math.prod(s) for s, _ in expected.values())
    assert sent_numbers < 48 * 48 * 3


def test_clipping_bound_holds_and_noise_is_added(federation: dict[str, Any]) -> None:
    initial = _head(federation["out"] / "initial.npz")
    dim = sum(v.size for v in initial.values())
    entries = [
        json.loads(line)
        for path in sorted(federation["sites"].glob("site-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert len(entries) == SITES * ROUNDS
    assert {e["partition"] for e in entries} == set(range(SITES))
    for e in entries:
        assert e["clip_norm"] == CLIP
        assert e["clipped_norm"] <= CLIP * (1 + 1e-9), e
        assert e["noise_std"] == pytest.approx(NOISE * CLIP)
    # the bound was active: some raw updates were larger than it
    assert any(e["norm_before"] > CLIP for e in entries)
    # server side: a clipped update plus N(0, std^2 I) noise has norm <= clip + std *
    # (sqrt(dim) + 6) except with negligible probability; unclipped ones would exceed it
    std = NOISE * CLIP
    for a in (federation["out"] / "arrivals.jsonl").read_text().splitlines():
        norm = json.loads(a)["update_norm"]
        assert norm <= CLIP + std * (math.sqrt(dim) + 6), norm
        assert norm > 0
