"""Operator benchmark: N MultimodalModels created at once against the strict emulator.

Runs ``mmo operator`` as a subprocess, creates N objects in one burst, plays KubeRay
(reports each RayService Ready as soon as it exists), and measures:

- time from creation to ``Ready=True`` per object (p50, p95, max);
- API calls per new object during the burst (by method and resource), kopf's and ours,
  counted from the end of the operator's start-up (its start-up calls reported apart);
- writes during the following quiet period (should be zero: idempotent reconcile);
- a fault burst: for ``--fault-seconds`` every status write and RayService write answers
  500 while KubeRay reports a quarter of the models unready and the spec of another
  quarter changes; then the time from the end of the burst until every model's status
  tells the truth again (Ready=False for the unready ones; the new generation observed
  and applied for the changed ones), with the resync timer far away (``--resync-seconds``).

Targets: p95 <= 5 s, <= 10 API calls per new object, zero writes in the next minute, a
truthful status within 10 s of a fault burst's end.

    .venv/bin/python hack/bench/bench_operator.py [--objects 50] [--quiet-seconds 60]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OPERATOR_ARGS: list[str] = []
sys.path.insert(0, str(REPO / "tests" / "k8s"))

import kmock  # noqa: E402
from kube_emulator import EmulatorThread  # noqa: E402
from operator_harness import (  # noqa: E402
    MMM,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    kuberay_crd,
    mmm_crd,
    model_doc,
    podmonitor_crd,
)


def _names(emu: Any, resource: str) -> list[str]:
    """Names of the live objects of a resource (read in the emulator's loop, no copies)."""
    res = kmock.resource(resource)
    return [key[2] for key, obj in emu.objects.items() if key[0] == res and not obj.deleted]


def _ready_names(emu: Any) -> list[str]:
    res = kmock.resource(MMM)
    return [
        key[2]
        for key, obj in emu.objects.items()
        if key[0] == res and not obj.deleted and _ready(obj.last.raw)
    ]


def _ready(obj: dict[str, Any] | None) -> bool:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == "Ready":
            return bool(cond["status"] == "True")
    return False


def _truthful(emu: Any, unready: set[str], changed: set[str]) -> set[str]:
    """The models whose status says what is true after the fault burst."""
    done = set()
    for key, obj in emu.objects.items():
        if key[0] != kmock.resource(MMM) or obj.deleted:
            continue
        raw, name = obj.last.raw, key[2]
        if name in unready and not _ready(raw):
            done.add(name)
        elif name in changed:
            rs = emu.get(RAYSERVICES, key[1], name)
            status = raw.get("status") or {}
            applied = rs is not None and "maxBatchSize: 24" in rs["spec"]["serveConfigV2"]
            if applied and status.get("observedGeneration") == raw["metadata"]["generation"]:
                done.add(name)
    return done


# The watches kopf opens once its start-up (discovery, first lists) is done.
STARTUP_WATCHES = ("multimodalmodels", "rayservices", "customresourcedefinitions")


def wait_for_startup(cluster: Cluster, timeout: float, settle: float = 1.0) -> float:
    """Wait until the operator watches what it handles, then ``settle`` seconds more for
    the handlers of the first listings; returns the seconds it took. Start-up calls are
    reported apart from the calls per new object (a fixed sleep let them fall into the
    burst on a loaded machine)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        watched = cluster.call(
            lambda: {
                r.resource.plural
                for r in cluster.emu.request_log
                if r.resource is not None and r.params.get("watch") == "true"
            }
        )
        if all(plural in watched for plural in STARTUP_WATCHES):
            time.sleep(settle)
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(f"the operator did not open its watches in {timeout} s")


def fault_burst(
    cluster: Cluster, names: list[str], seconds: float, timeout: float
) -> dict[str, Any]:
    """500 on every status and RayService write for ``seconds`` while things change."""
    emu = cluster.emu
    quarter = max(1, len(names) // 4)
    unready, changed = set(names[:quarter]), set(names[quarter : 2 * quarter])
    faults = [
        cluster.call(
            emu.inject, 500, count=10**9, method="PATCH", resource=MMM, subresource="status"
        ),
        cluster.call(emu.inject, 500, count=10**9, method="PATCH", resource=RAYSERVICES),
    ]
    for name in sorted(unready):
        cluster.play_kuberay(name, ready=False, namespace="bench")
    for name in sorted(changed):
        cluster.patch(MMM, name, {"spec": {"batching": {"maxBatchSize": 24}}}, "bench")
    time.sleep(seconds)
    for fault in faults:
        cluster.call(emu.faults.remove, fault)
    end = time.monotonic()
    truthful_at: dict[str, float] = {}
    while len(truthful_at) < len(unready | changed) and time.monotonic() - end < timeout:
        for name in cluster.call(_truthful, emu, unready, changed):
            truthful_at.setdefault(name, time.monotonic() - end)
        time.sleep(0.1)
    times = sorted(truthful_at.values())
    return {
        "fault_seconds": seconds,
        "models_affected": len(unready | changed),
        "truthful": len(times),
        "failed_writes": sum(f.hits for f in faults),
        "to_truthful_status_s": {
            "p50": statistics.median(times) if times else None,
            "max": times[-1] if times else None,
        },
    }


def run(
    objects: int,
    quiet_seconds: float,
    timeout: float,
    log_dir: str | None,
    fault_seconds: float = 5.0,
    resync_seconds: float = 60.0,
) -> dict[str, Any]:
    with EmulatorThread() as thread, tempfile.TemporaryDirectory() as scratch:
        tmp = log_dir or scratch
        cluster = Cluster(thread)
        for crd in (mmm_crd(), kuberay_crd(), podmonitor_crd()):
            cluster.install(crd)
        kubeconfig = thread.write_kubeconfig(str(Path(tmp) / "kubeconfig"))
        op = OperatorProcess(
            kubeconfig,
            Path(tmp) / "operator.log",
            "--resync-seconds",
            str(resync_seconds),
            *OPERATOR_ARGS,
        )
        try:
            startup = wait_for_startup(cluster, timeout)
            mark = cluster.request_mark()
            created: dict[str, float] = {}
            t0 = time.monotonic()
            for i in range(objects):
                name = f"m{i:03d}"
                cluster.create(MMM, model_doc(name, "bench"))
                created[name] = time.monotonic()
            ready_at: dict[str, float] = {}
            played: set[str] = set()
            while len(ready_at) < objects and time.monotonic() - t0 < timeout:
                for name in thread.call(_names, thread.emulator, RAYSERVICES):
                    if name not in played:
                        cluster.play_kuberay(name, namespace="bench")
                        played.add(name)
                for name in thread.call(_ready_names, thread.emulator):
                    ready_at.setdefault(name, time.monotonic())
                time.sleep(0.1)
            burst_end = cluster.request_mark()
            time.sleep(2.0)  # let the last status writes and kopf bookkeeping land
            settle = cluster.request_mark()
            time.sleep(quiet_seconds)
            quiet_writes = cluster.writes_since(settle)
            reqs = thread.call(lambda: thread.emulator.request_log[mark:burst_end])
            faults = fault_burst(cluster, sorted(created), fault_seconds, timeout)
        finally:
            op.stop()
        latencies = sorted(ready_at[n] - created[n] for n in ready_at)
        by_kind: collections.Counter[str] = collections.Counter()
        for r in reqs:
            plural = (r.resource.plural if r.resource is not None else None) or r.url.path
            watch = "watch" if r.params.get("watch") == "true" else ""
            by_kind[
                f"{r.method.value} {plural}{'/' + r.subresource if r.subresource else ''}"
                f"{' ' + watch if watch else ''}"
            ] += 1
        writes = sum(n for k, n in by_kind.items() if not k.startswith("GET"))
        p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else None
        return {
            "objects": objects,
            "ready": len(ready_at),
            "latency_s": {
                "p50": statistics.median(latencies) if latencies else None,
                "p95": p95,
                "max": latencies[-1] if latencies else None,
            },
            "startup_s": startup,
            "startup_calls": mark,
            "api_calls_per_object": len(reqs) / objects,
            "writes_per_object": writes / objects,
            "calls_by_kind": dict(by_kind.most_common()),
            "quiet_seconds": quiet_seconds,
            "writes_in_quiet_period": len(quiet_writes),
            "fault_burst": faults,
            "targets": {
                "p95_s": 5.0,
                "api_calls_per_object": 10,
                "quiet_writes": 0,
                "to_truthful_status_s": 10.0,
            },
            "ratios_to_target": {
                "p95": (p95 / 5.0) if p95 is not None else None,
                "api_calls": (len(reqs) / objects) / 10,
                "to_truthful_status": (
                    faults["to_truthful_status_s"]["max"] / 10.0
                    if faults["to_truthful_status_s"]["max"] is not None
                    else None
                ),
            },
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--fault-seconds", type=float, default=5.0)
    parser.add_argument("--resync-seconds", type=float, default=60.0)
    parser.add_argument("--log-dir", default=None, help="keep the operator log here")
    parser.add_argument("--out", default=str(REPO / "hack" / "bench" / "results" / "operator.json"))
    parser.add_argument("--operator-debug", action="store_true", help="kopf debug logs")
    args = parser.parse_args()
    if args.operator_debug:
        OPERATOR_ARGS.append("--debug")
    result = run(
        args.objects,
        args.quiet_seconds,
        args.timeout,
        args.log_dir,
        args.fault_seconds,
        args.resync_seconds,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = result["ready"] == result["objects"]
    return (
        0
        if ok and result["fault_burst"]["truthful"] == result["fault_burst"]["models_affected"]
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
