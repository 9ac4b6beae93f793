"""Real Flower federations on loopback: SuperLink + 3 SuperNodes + ``flwr run`` (plain
FedAvg), and SuperLink + 4 SuperNodes with secure aggregation (SecAgg+) and dropouts.

Flower cannot share the serving venv (its FastAPI/Starlette pins break Ray Serve), so
the federation runs with ``.venv-federated`` (the ``federated_venv`` fixture creates it
when missing, as ``make federated-venv`` does) as subprocesses; this process (the main
venv) only reads what they wrote and measures the result itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SITES = 3
ROUNDS = 3
CLIP = 0.5
# The utility test needs a noise level the signal of 3 sites x 3 rounds survives (the
# admission minimum 0.5 is meant for federations of many sites and rounds): std 0.01.
NOISE = 0.02


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
def federation(federated_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("federation")
    source = _model_source()
    cmd = [
        str(federated_venv / "bin/python"),
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


# Secure aggregation (SecAgg+) on 4 SuperNodes, 2 rounds: in round 1 site 3 fails after
# sending its masked update (tolerated: 3 shares of 4 suffice to remove its mask); in
# round 2 site 2 fails before sending it (not tolerated: the sum would hold 3 updates and
# Flower would unmask it; the round must fail, visibly).
SECURE_SITES = 4
SECURE_NOISE = 1.0


@pytest.fixture(scope="module")
def secure_federation(
    federated_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("secure-federation")
    config = {
        "secure-aggregation": "true",
        "keep-received": "true",
        "min-clients": SECURE_SITES,
        "num-rounds": 2,
        "model-source": _model_source(),
        "head-init": "zeros",
        "clip-norm": CLIP,
        "noise-multiplier": SECURE_NOISE,
        "scenes-per-site": 12,
        "local-epochs": 1,
    }
    cmd = [str(federated_venv / "bin/python"), "-m", "mmo_serving.federated", "local", str(work)]
    cmd += ["--sites", str(SECURE_SITES), "--timeout", "500", "--keep-updates"]
    for drop in ("3:1:before-unmask", "2:2:before-masking"):
        cmd += ["--drop", drop]
    for key, value in config.items():
        cmd += ["-c", f"{key}={value}"]
    runner = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = runner.communicate(timeout=560)
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        _kill_recorded(work)
    logs = "".join(
        f"\n== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in work.glob("*.log")
    )
    assert (work / "out" / "rounds.jsonl").is_file(), f"no round ran:\n{out}\n{err}{logs}"
    return {
        "work": work,
        "out": work / "out",
        "sites": work / "site-logs",
        "returncode": runner.returncode,
        "output": out + err,
        "logs": logs,
    }


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _site_updates(sites: Path, server_round: int) -> list[np.ndarray]:
    from mmo_serving.federated.site import PARAM_NAMES

    out = []
    for p in range(SECURE_SITES):
        with np.load(sites / f"update-{p}-{server_round}.npz") as z:
            out.append(_flat([z[k] for k in PARAM_NAMES]))
    return out


def _rounds(fed: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (fed["out"] / "rounds.jsonl").read_text().splitlines()]


def test_secure_aggregate_is_the_mean_of_every_site_within_quantization(
    secure_federation: dict[str, Any],
) -> None:
    from mmo_serving.federated.site import PARAM_NAMES

    fed = secure_federation
    params = json.loads((fed["out"] / "secagg.json").read_text())
    assert (params["num_shares"], params["reconstruction_threshold"]) == (4, 3)
    assert _rounds(fed)[0] == {"round": 1, "outcome": "aggregated", "secure": True, "sites": 4}
    with np.load(fed["out"] / "aggregate-1.npz") as z:
        aggregate = _flat([z[k] for k in PARAM_NAMES])
    updates = _site_updates(fed["sites"], 1)
    plain_mean = np.mean(updates, axis=0)
    bound = 2 * params["clipping_range"] / params["quantization_range"]
    err = float(np.max(np.abs(aggregate - plain_mean)))
    print(f"max |secure - plain mean| = {err:.3g} (quantization bound {bound:.3g})")
    assert err <= bound + 1e-6
    # site 3 dropped after sending its masked update: its update is in the mean all the same
    without_dropped = np.mean(updates[:3], axis=0)
    assert float(np.max(np.abs(aggregate - without_dropped))) > 1000 * (bound + 1e-6)


def test_the_server_receives_only_masked_updates(secure_federation: dict[str, Any]) -> None:
    fed = secure_federation
    params = json.loads((fed["out"] / "secagg.json").read_text())
    c, q = params["clipping_range"], params["quantization_range"]
    updates = _site_updates(fed["sites"], 1)
    received = sorted((fed["out"] / "received").glob("masked-1-*.npz"))
    assert len(received) == SECURE_SITES
    for path in received:
        with np.load(path) as z:
            vectors = [z[f"arr_{i}"] for i in range(len(z.files))]
        assert vectors[0].shape == (1,)  # the masked weight, then the head's arrays
        masked = _flat(vectors[1:])
        assert masked.size == updates[0].size
        assert masked.min() >= 0 and masked.max() < params["modulus_range"]
        for update in updates:
            quantized = np.round((np.clip(update, -c, c) + c) * q / (2 * c))
            # what an unmasked reply would look like: the update itself, quantized ...
            assert np.corrcoef(quantized, update)[0, 1] > 0.99
            # ... and what arrived: neither equal to nor correlated with any site's update
            assert not np.array_equal(masked, quantized)
            assert abs(np.corrcoef(masked, update)[0, 1]) < 0.15, path.name
    # no reply of any stage carried a plain array
    arrivals = [
        json.loads(line) for line in (fed["out"] / "arrivals.jsonl").read_text().splitlines()
    ]
    assert arrivals and all(a.get("array_values", 0) == 0 for a in arrivals)


def test_losing_more_sites_than_tolerated_fails_visibly(secure_federation: dict[str, Any]) -> None:
    fed = secure_federation
    last = _rounds(fed)[-1]
    assert (last["round"], last["outcome"], last["secure"]) == (2, "failed", True)
    assert "only 3 of 4 sites sent their masked update" in last["reason"], last
    metrics = (fed["out"] / "metrics.prom").read_text()
    assert 'mmo_federated_rounds_total{secure="true",outcome="aggregated"} 1' in metrics
    assert 'mmo_federated_rounds_total{secure="true",outcome="failed"} 1' in metrics
    assert not (fed["out"] / "aggregate-2.npz").exists()
    assert not (fed["out"] / "done.json").exists()
    assert fed["returncode"] != 0, fed["output"]


def test_secure_sites_clip_and_add_their_share_of_the_noise(
    secure_federation: dict[str, Any],
) -> None:
    entries = [
        json.loads(line)
        for path in sorted(secure_federation["sites"].glob("site-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert {e["partition"] for e in entries} == set(range(SECURE_SITES))
    for e in entries:
        assert e["secure_sites"] == SECURE_SITES
        assert e["clipped_norm"] <= CLIP * (1 + 1e-9)
        assert e["noise_std"] == pytest.approx(SECURE_NOISE * CLIP / math.sqrt(SECURE_SITES))


def test_no_process_left_after_a_failed_secure_run(secure_federation: dict[str, Any]) -> None:
    pgids = [int(x) for x in (secure_federation["work"] / "pgids.txt").read_text().split()]
    assert len(pgids) == 1 + SECURE_SITES
    for pgid in pgids:
        assert _live_members(pgid) == []
