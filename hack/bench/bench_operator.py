"""Operator benchmark: N MultimodalModels created at once against the strict emulator.

Runs ``mmo operator`` as a subprocess, creates N objects in one burst, plays KubeRay
(reports each RayService Ready as soon as it exists), and measures:

- time from creation to ``Ready=True`` per object (p50, p95, max);
- API calls per object during the burst (by method and resource), kopf's and ours;
- writes during the following quiet period (should be zero: idempotent reconcile).

Targets (issue 6): p95 <= 5 s, <= 6 API calls per object, zero writes in the next minute.

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


def run(objects: int, quiet_seconds: float, timeout: float, log_dir: str | None) -> dict[str, Any]:
    with EmulatorThread() as thread, tempfile.TemporaryDirectory() as scratch:
        tmp = log_dir or scratch
        cluster = Cluster(thread)
        for crd in (mmm_crd(), kuberay_crd(), podmonitor_crd()):
            cluster.install(crd)
        kubeconfig = thread.write_kubeconfig(str(Path(tmp) / "kubeconfig"))
        op = OperatorProcess(
            kubeconfig, Path(tmp) / "operator.log", "--resync-seconds", "20", *OPERATOR_ARGS
        )
        try:
            time.sleep(4.0)  # operator start-up (imports, discovery, first lists)
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
        finally:
            op.stop()
        latencies = sorted(ready_at[n] - created[n] for n in ready_at)
        by_kind: collections.Counter[str] = collections.Counter()
        for r in reqs:
            plural = r.resource.plural if r.resource is not None else "discovery"
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
            "api_calls_per_object": len(reqs) / objects,
            "writes_per_object": writes / objects,
            "calls_by_kind": dict(by_kind.most_common()),
            "quiet_seconds": quiet_seconds,
            "writes_in_quiet_period": len(quiet_writes),
            "targets": {"p95_s": 5.0, "api_calls_per_object": 6, "quiet_writes": 0},
            "ratios_to_target": {
                "p95": (p95 / 5.0) if p95 is not None else None,
                "api_calls": (len(reqs) / objects) / 6,
            },
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--log-dir", default=None, help="keep the operator log here")
    parser.add_argument("--out", default=str(REPO / "hack" / "bench" / "results" / "operator.json"))
    parser.add_argument("--operator-debug", action="store_true", help="kopf debug logs")
    args = parser.parse_args()
    if args.operator_debug:
        OPERATOR_ARGS.append("--debug")
    result = run(args.objects, args.quiet_seconds, args.timeout, args.log_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ready"] == result["objects"] else 1


if __name__ == "__main__":
    sys.exit(main())
