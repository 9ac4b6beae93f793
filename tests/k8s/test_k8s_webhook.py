"""The validating webhook, served by kopf's webhook server of a running `mmo operator`.

The test posts AdmissionReview requests to the operator's webhook server on loopback
(plain HTTP: ``--webhook-insecure``), as the API server would, and compares the answer
with what ``mmo validate`` prints for the same file.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from operator_harness import REPO, Cluster, OperatorProcess, model_doc, wait_for

StartOperator = Callable[..., OperatorProcess]
INVALID = REPO / "tests" / "unit" / "invalid"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    port = _free_port()
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
