"""values.schema.json is strict: bad values fail with a message naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

SCHEMA = Path(__file__).resolve().parents[2] / "charts" / "mmo" / "values.schema.json"

BAD: list[tuple[dict[str, Any], str]] = [
    ({"operatr": {}}, "additional properties 'operatr' not allowed"),
    ({"operator": {"runAsUser": 0}}, "/operator/runAsUser"),
    ({"operator": {"replicas": "2"}}, "/operator/replicas"),
    ({"operator": {"replicas": 2}}, "/operator/replicas"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    ({"operator": {"image": {"digest": "sha256:xyz"}}}, "/operator/image/digest"),
    ({"operator": {"image": {"tag": "has space"}}}, "/operator/image/tag"),
    ({"operator": {"watch": {"namespaces": ["Bad_NS"]}}}, "/operator/watch/namespaces/0"),
    ({"operator": {"resources": {"limits": {"cpu": "lots"}}}}, "/operator/resources/limits/cpu"),
    ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
    ({"operator": {"extraArgs": ["rm -rf"]}}, "/operator/extraArgs/0"),
    ({"webhook": {"failurePolicy": "Never"}}, "/webhook/failurePolicy"),
    ({"webhook": {"path": "validate"}}, "/webhook/path"),
    ({"webhook": {"tls": {"caBundle": "not base64!"}}}, "/webhook/tls/caBundle"),
    (
        {"webhook": {"certManager": {"issuerRef": {"kind": "Issuer"}}}},
        "/webhook/certManager/issuerRef",
    ),
    (
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "/metrics/serviceMonitor/interval",
    ),
    ({"prometheusRule": {"latencyTargetMs": -1}}, "/prometheusRule/latencyTargetMs"),
    (
        {"prometheusRule": {"latencyTargetsMs": {"Bad Name": 100}}},
        "/prometheusRule/latencyTargetsMs",
    ),
    (
        {"prometheusRule": {"expertBalancednessThreshold": 0.5}},
        "/prometheusRule/expertBalancednessThreshold",
    ),
    ({"prometheusRule": {"policyRefusalBurst": 0}}, "/prometheusRule/policyRefusalBurst"),
    ({"prometheusRule": {"kvCacheUsageThreshold": 1.5}}, "/prometheusRule/kvCacheUsageThreshold"),
    ({"networkPolicy": {"apiServerCIDRs": ["api.example.com"]}}, "/networkPolicy/apiServerCIDRs/0"),
    ({"networkPolicy": {"apiServerCIDRs": ["10.0.0.1/33"]}}, "/networkPolicy/apiServerCIDRs/0"),
    ({"networkPolicy": {"kuberayNamespace": ""}}, "/networkPolicy/kuberayNamespace"),
    ({"networkPolicy": {"monitoringNamespace": "Mon"}}, "/networkPolicy/monitoringNamespace"),
    ({"admission": {"podCIDRs": []}}, "/admission/podCIDRs"),
    ({"admission": {"serviceCIDRs": ["services"]}}, "/admission/serviceCIDRs/0"),
    ({"admission": {"aggregatorNamespaces": ["Fed"]}}, "/admission/aggregatorNamespaces/0"),
    ({"admission": {"podCidrs": ["10.0.0.0/8"]}}, "additional properties 'podCidrs'"),
    ({"dashboards": {"enabled": "yes"}}, "/dashboards/enabled"),
    ({"commonLabels": {"bad key!": "x"}}, "/commonLabels"),
]


@pytest.fixture(scope="module")
def loaded() -> Any:
    with helm.Chart.load(SCHEMA.parent) as chart:
        yield chart


@pytest.mark.parametrize(("values", "where"), BAD, ids=[w for _, w in BAD])
def test_schema_rejects_bad_values(loaded: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        loaded.validate_schema(values)
    assert where in str(err.value)


@pytest.mark.parametrize(("values", "where"), BAD[:3], ids=[w for _, w in BAD[:3]])
def test_render_refuses_bad_values_too(loaded: Any, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmError) as err:
        loaded.render(values, name="mmo", namespace="mmo-system")
    assert where in str(err.value)


def test_defaults_and_documented_options_pass(
    loaded: Any, values_all_on: dict[str, Any], values_user_tls: dict[str, Any]
) -> None:
    for values in (None, values_all_on, values_user_tls):
        loaded.validate_schema(values)


def test_every_object_in_the_schema_is_closed() -> None:
    """A typo anywhere (not only at the top) must fail: objects list their keys."""
    open_maps = {
        "commonLabels",
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "annotations",
        "labels",
        "affinity",
        "latencyTargetsMs",
        "global",
        "items",
    }

    def walk(node: dict[str, Any], key: str) -> None:
        if node.get("type") == "object" and "properties" in node and key not in open_maps:
            assert node.get("additionalProperties") is False, f"{key} is open"
        for child_key, child in node.get("properties", {}).items():
            walk(child, child_key)
        for alt in node.get("oneOf", []):
            walk(alt, key)

    walk(json.loads(SCHEMA.read_text()), "<root>")
