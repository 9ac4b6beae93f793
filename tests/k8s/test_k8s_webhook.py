"""The validating webhook, served by kopf's webhook server of a running `mmo operator`.

The test posts AdmissionReview requests to the operator's webhook server on loopback
(plain HTTP: ``--webhook-insecure``), as the API server would, and compares the answer
with what ``mmo validate`` prints for the same file.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from operator_harness import REPO, Cluster, OperatorProcess, model_doc, wait_for

from ports import free_port

StartOperator = Callable[..., OperatorProcess]
INVALID = REPO / "tests" / "unit" / "invalid"


def _review(
    obj: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "serving.mmo.dev", "version": "v1alpha1", "kind": "MultimodalModel"},
            "resource": {
                "group": "serving.mmo.dev",
                "version": "v1alpha1",
                "resource": "multimodalmodels",
            },
            "requestKind": {
                "group": "serving.mmo.dev",
                "version": "v1alpha1",
                "kind": "MultimodalModel",
            },
            "operation": operation,
            "namespace": "ns1",
            "name": obj["metadata"]["name"],
            "object": obj,
            "oldObject": old,
            "userInfo": {"username": "tester", "groups": ["system:authenticated"]},
            "dryRun": False,
        },
    }


def _validate_cli(path: Path) -> list[str]:
    """The problem lines `mmo validate` prints for a file (without the file prefix)."""
    out = subprocess.run(
        [sys.executable, "-m", "mmo_operator.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    prefix = f"{path}: "
    return [line.removeprefix(prefix) for line in out.stderr.splitlines() if line.strip()]


def test_webhook_rejects_with_the_mmo_validate_messages(
    cluster: Cluster, start_operator: StartOperator, tmp_path: Path
) -> None:
    port = free_port()
    start_operator(
        "--webhook-port",
        str(port),
        "--webhook-host",
        "127.0.0.1",
        "--webhook-insecure",
        webhook=True,
    )
    url = f"http://127.0.0.1:{port}/validate"

    def serving() -> bool:
        try:
            httpx.post(url, json=_review(model_doc()), timeout=2)
        except httpx.TransportError:
            return False
        return True

    wait_for("the webhook server", serving, timeout=40, every=0.3)

    ok = httpx.post(url, json=_review(model_doc()), timeout=10).json()
    assert ok["response"]["allowed"] is True

    for name in ("hybrid-http.yaml", "replicas.yaml", "unknown-field.yaml", "too-big.yaml"):
        path = INVALID / name
        doc = yaml.safe_load(path.read_text())
        doc["metadata"].setdefault("namespace", "ns1")
        answer = httpx.post(url, json=_review(doc), timeout=10).json()["response"]
        assert answer["allowed"] is False, name
        assert answer["status"]["code"] == 422
        expected = _validate_cli(path)
        assert answer["status"]["message"].splitlines() == expected, name

    # An object admitted under older rules can still be deleted (kopf removes its
    # finalizer with an UPDATE) and labelled; a new spec is judged again.
    invalid = yaml.safe_load((INVALID / "replicas.yaml").read_text())
    invalid["metadata"].update(namespace="ns1", finalizers=["serving.mmo.dev/finalizer"])
    leaving = {**invalid, "metadata": {**invalid["metadata"], "finalizers": []}}
    leaving["metadata"]["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    answer = httpx.post(url, json=_review(leaving, "UPDATE", invalid), timeout=10).json()
    assert answer["response"]["allowed"] is True
    respec = {**invalid, "spec": {**invalid["spec"], "batching": {"maxBatchSize": 4}}}
    answer = httpx.post(url, json=_review(respec, "UPDATE", invalid), timeout=10).json()
    assert answer["response"]["allowed"] is False


def _hybrid(cidrs: list[str], endpoint: str = "https://llm.example.com/v1") -> dict[str, Any]:
    return model_doc(
        isolation={
            "mode": "hybrid",
            "hybrid": {
                "endpoint": endpoint,
                "cidrs": cidrs,
                "credentialsSecret": "cloud-key",
                "offloadDataClasses": ["public"],
            },
        }
    )


def test_webhook_judges_with_the_cluster_ranges_of_the_operator_flags(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """--pod-cidrs / --service-cidrs (chart values admission.*) replace the defaults: a
    range of this cluster is refused, a default range that is not this cluster's is not."""
    port = free_port()
    start_operator(
        "--webhook-port",
        str(port),
        "--webhook-host",
        "127.0.0.1",
        "--webhook-insecure",
        "--pod-cidrs",
        "100.64.0.0/16",
        "--service-cidrs",
        "100.65.0.0/16",
        webhook=True,
    )
    url = f"http://127.0.0.1:{port}/validate"

    def answer(doc: dict[str, Any]) -> dict[str, Any] | None:
        try:
            reply = httpx.post(url, json=_review(doc), timeout=2).json()
        except httpx.TransportError:
            return None
        result: dict[str, Any] = reply["response"]
        return result

    inside = wait_for("the webhook server", lambda: answer(_hybrid(["100.65.0.0/24"])), 40, 0.3)
    assert inside["allowed"] is False
    assert "overlaps the cluster's Service CIDR 100.65.0.0/16" in inside["status"]["message"]
    # 10.96.0.0/12 is refused by default; this cluster's Services are elsewhere
    outside = answer(_hybrid(["10.96.8.0/24"], "https://10.96.8.9/v1"))
    assert outside is not None and outside["allowed"] is True, outside
