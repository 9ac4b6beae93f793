"""Fixtures for the Helm chart tests: offline render and lint with helm-python-sdk."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mmo"
RELEASE = "mmo"
NAMESPACE = "mmo-system"

Obj = dict[str, Any]

# Every option switched on (with the cert-manager path for the webhook).
ALL_ON: Obj = {
    "commonLabels": {"team": "ml-platform"},
    "operator": {
        "replicas": 1,
        "image": {"digest": "sha256:" + "a" * 64, "pullPolicy": "IfNotPresent"},
        "imagePullSecrets": [{"name": "regcred"}],
        "extraArgs": ["--verbose"],
        "extraEnv": [{"name": "MMO_LOG_FORMAT", "value": "json"}],
        "podAnnotations": {"example.com/owner": "ml"},
        "podLabels": {"tier": "control"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "control", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "preference": {
                            "matchExpressions": [
                                {"key": "role", "operator": "In", "values": ["control"]}
                            ]
                        },
                    }
                ]
            }
        },
        "priorityClassName": "system-cluster-critical",
    },
    "serviceAccount": {"annotations": {"example.com/role": "mmo"}},
    "webhook": {
        "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "kps"},
        "latencyTargetsMs": {"private-vqa": 800, "hybrid-chat": 1500},
    },
    "dashboards": {"annotations": {"grafana_folder": "mmo"}},
    "networkPolicy": {
        "apiServerCIDRs": ["172.18.0.2/32", "10.96.0.1/32"],
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
}

# The webhook without cert-manager: a user-supplied TLS Secret and CA bundle.
USER_TLS: Obj = {
    "webhook": {
        "certManager": {"enabled": False},
        "tls": {"secretName": "mmo-webhook-tls", "caBundle": "TUlJQy4uLg=="},
    }
}

NAMESPACED: Obj = {"operator": {"watch": {"allNamespaces": False, "namespaces": ["ml-a", "ml-b"]}}}


def split_docs(manifests: dict[str, str]) -> list[Obj]:
    """All rendered objects (NOTES.txt and empty documents left out)."""
    docs: list[Obj] = []
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="session")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[..., list[Obj]]:
    def _render(values: Obj | None = None, namespace: str = NAMESPACE) -> list[Obj]:
        return split_docs(chart.render(values, name=RELEASE, namespace=namespace, is_install=True))

    return _render


@pytest.fixture(scope="session")
def notes(chart: Any) -> Callable[[Obj | None], str]:
    def _notes(values: Obj | None = None) -> str:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return next(text for name, text in out.items() if name.endswith("NOTES.txt"))

    return _notes


@pytest.fixture
def values_all_on() -> Obj:
    return copy.deepcopy(ALL_ON)


@pytest.fixture
def values_user_tls() -> Obj:
    return copy.deepcopy(USER_TLS)


@pytest.fixture
def values_namespaced() -> Obj:
    return copy.deepcopy(NAMESPACED)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def crd_schemas() -> Path:
    """The vendored upstream CRDs (hack/schemas/README.md)."""
    return REPO / "hack" / "schemas"
