"""The chart renders offline with defaults and with every option; objects are what we promise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

Obj = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]


def by_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Obj], kind: str) -> Obj:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_container(docs: list[Obj]) -> Obj:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def test_default_render_has_the_expected_objects(render: Any) -> None:
    kinds = sorted(d["kind"] for d in render())
    assert kinds == sorted(
        [
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",  # metrics
            "Service",  # webhook
            "ValidatingWebhookConfiguration",
            "Issuer",
            "Certificate",
            "NetworkPolicy",
            *["ConfigMap"] * 5,  # one per dashboard
        ]
    )


def test_all_options_render_adds_monitoring_objects(render: Any, values_all_on: Obj) -> None:
    docs = render(values_all_on)
    assert len(by_kind(docs, "ServiceMonitor")) == 1
    assert len(by_kind(docs, "PrometheusRule")) == 1
    # An existing issuer is used: no self-signed Issuer is created.
    assert by_kind(docs, "Issuer") == []
    cert = one(docs, "Certificate")
    assert cert["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "ml-platform", doc["metadata"]["name"]


def test_every_namespaced_object_names_its_namespace(render: Any, values_all_on: Obj) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration"}
    for doc in render(values_all_on, namespace="ml-ops"):
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"]["namespace"] == "ml-ops", doc["kind"]


@pytest.mark.parametrize("variant", ["defaults", "all_on"])
def test_operator_pod_meets_restricted_pod_security(
    render: Any, values_all_on: Obj, variant: str
) -> None:
    docs = render(values_all_on if variant == "all_on" else None)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork") is None and pod.get("hostPID") is None
    c = operator_container(docs)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}, kind
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["port"] == "health"
    # Only the operator pod mounts an API token; the ServiceAccount does not by default.
    assert pod["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    # The read-only root filesystem leaves only an emptyDir /tmp writable.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/mmo/webhook"]["readOnly"] is True
    assert "/tmp" in mounts


def test_operator_args_follow_values(render: Any, values_namespaced: Obj) -> None:
    default_args = operator_container(render())["args"]
    assert default_args[0] == "operator"
    assert "--all-namespaces" in default_args
    assert "--webhook-cert=/etc/mmo/webhook/tls.crt" in default_args
    assert "--no-webhook" not in default_args

    ns_args = operator_container(render(values_namespaced))["args"]
    assert "--all-namespaces" not in ns_args
    assert [a for a in ns_args if a.startswith("--namespace=")] == [
        "--namespace=ml-a",
        "--namespace=ml-b",
    ]

    off = render({"webhook": {"enabled": False}})
    off_args = operator_container(off)["args"]
    assert "--no-webhook" in off_args
    assert not [a for a in off_args if a.startswith("--webhook")]
    assert by_kind(off, "ValidatingWebhookConfiguration") == []
    assert by_kind(off, "Certificate") == []
    ports = {p["name"] for p in operator_container(off)["ports"]}
    assert ports == {"metrics", "health"}


def test_apiserver_cidrs_become_operator_args(render: Any, values_all_on: Obj) -> None:
    assert not [a for a in operator_container(render())["args"] if "apiserver" in a]
    args = operator_container(render(values_all_on))["args"]
    assert [a for a in args if a.startswith("--apiserver-cidr")] == [
        "--apiserver-cidr=172.18.0.2/32",
        "--apiserver-cidr=10.96.0.1/32",
    ]


def test_network_peers_and_cluster_ranges_become_operator_args(render: Any) -> None:
    from mmo_operator.builders.networkpolicy import (
        DEFAULT_KUBERAY_NAMESPACE,
        DEFAULT_MONITORING_NAMESPACE,
    )
    from mmo_operator.policy.addresses import (
        DEFAULT_AGGREGATOR_NAMESPACES,
        DEFAULT_POD_CIDRS,
        DEFAULT_SERVICE_CIDRS,
    )

    def flags(values: Obj | None) -> dict[str, str]:
        args = operator_container(render(values))["args"]
        return dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)

    got = flags(None)
    # the chart's defaults are the operator's own
    assert got["--kuberay-namespace"] == DEFAULT_KUBERAY_NAMESPACE
    assert got["--monitoring-namespace"] == DEFAULT_MONITORING_NAMESPACE
    assert got["--pod-cidrs"] == ",".join(DEFAULT_POD_CIDRS)
    assert got["--service-cidrs"] == ",".join(DEFAULT_SERVICE_CIDRS)
    assert got["--aggregator-namespaces"] == ",".join(DEFAULT_AGGREGATOR_NAMESPACES)
    # the operator's namespace comes from the downward API (its flag's default)
    env = {e["name"]: e for e in operator_container(render())["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert not [a for a in operator_container(render())["args"] if "operator-namespace" in a]
    custom = flags(
        {
            "networkPolicy": {"kuberayNamespace": "ray-system", "monitoringNamespace": "obs"},
            "admission": {
                "podCIDRs": ["100.64.0.0/16"],
                "serviceCIDRs": ["100.65.0.0/16", "fd00:10::/108"],
                "aggregatorNamespaces": [],
            },
        }
    )
    assert custom["--kuberay-namespace"] == "ray-system"
    assert custom["--monitoring-namespace"] == "obs"
    assert custom["--pod-cidrs"] == "100.64.0.0/16"
    assert custom["--service-cidrs"] == "100.65.0.0/16,fd00:10::/108"
    assert custom["--aggregator-namespaces"] == ""


def test_the_rendered_args_parse_as_the_operator_reads_them(render: Any) -> None:
    import argparse

    from mmo_operator.builders.networkpolicy import NetworkPeers
    from mmo_operator.cli import cluster
    from mmo_operator.policy.addresses import ClusterNetworks

    parser = argparse.ArgumentParser()
    cluster.register(parser.add_subparsers())
    args = parser.parse_args(operator_container(render())["args"])
    assert cluster.cluster_networks(args) == ClusterNetworks()
    peers = cluster.network_peers(args)
    assert peers.kuberay_namespace == NetworkPeers().kuberay_namespace


def test_image_uses_app_version_tag_or_digest(render: Any, values_all_on: Obj) -> None:
    meta = yaml.safe_load((REPO / "charts/mmo/Chart.yaml").read_text())
    assert operator_container(render())["image"].endswith(f":{meta['appVersion']}")
    assert operator_container(render(values_all_on))["image"].endswith("@sha256:" + "a" * 64)
    assert operator_container(render({"operator": {"image": {"tag": "0.2.0"}}}))["image"].endswith(
        ":0.2.0"
    )


def test_webhook_fails_closed_and_gets_its_ca_from_cert_manager(render: Any) -> None:
    docs = render()
    vwc = one(docs, "ValidatingWebhookConfiguration")
    (hook,) = vwc["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "apiGroups": ["serving.mmo.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["multimodalmodels"],
            "scope": "Namespaced",
        }
    ]
    svc = hook["clientConfig"]["service"]
    webhook_service = next(
        d for d in by_kind(docs, "Service") if d["metadata"]["name"] == svc["name"]
    )
    assert webhook_service["spec"]["ports"][0]["port"] == svc["port"] == 443
    cert = one(docs, "Certificate")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"mmo-system/{cert['metadata']['name']}"
    )
    assert f"{svc['name']}.mmo-system.svc" in cert["spec"]["dnsNames"]
    # The pod mounts the Secret cert-manager writes.
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    secret_volumes = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secret_volumes == [cert["spec"]["secretName"]]


def test_webhook_fallback_uses_user_secret_and_ca_bundle(render: Any, values_user_tls: Obj) -> None:
    docs = render(values_user_tls)
    assert by_kind(docs, "Certificate") == [] and by_kind(docs, "Issuer") == []
    vwc = one(docs, "ValidatingWebhookConfiguration")
    assert "annotations" not in vwc["metadata"]
    assert vwc["webhooks"][0]["clientConfig"]["caBundle"] == "TUlJQy4uLg=="
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == [
        "mmo-webhook-tls"
    ]


def test_webhook_fallback_without_secret_fails_with_advice(chart: Any) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError) as err:
        chart.render({"webhook": {"certManager": {"enabled": False}}}, name="mmo", namespace="x")
    message = str(err.value)
    assert "webhook.tls.secretName" in message and "webhook.tls.caBundle" in message
    assert "webhook.enabled=false" in message


def test_namespaced_watch_without_namespaces_fails(chart: Any) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match=r"operator\.watch\.namespaces"):
        chart.render({"operator": {"watch": {"allNamespaces": False}}}, name="mmo", namespace="x")


def test_namespaced_watch_limits_webhook_to_those_namespaces(
    render: Any, values_namespaced: Obj
) -> None:
    hook = one(render(values_namespaced), "ValidatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml-a", "ml-b"]}
    ]


def test_metrics_service_and_service_monitor_agree(render: Any, values_all_on: Obj) -> None:
    docs = render(values_all_on)
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = sm["spec"]["endpoints"]
    targets = [
        s
        for s in by_kind(docs, "Service")
        if all(
            s["metadata"]["labels"].get(k) == v
            for k, v in sm["spec"]["selector"]["matchLabels"].items()
        )
    ]
    assert len(targets) == 1, "the ServiceMonitor must select exactly the metrics Service"
    assert [p["name"] for p in targets[0]["spec"]["ports"]] == [endpoint["port"]]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["mmo-system"]}


def test_dashboard_configmaps_carry_the_grafana_label(render: Any, values_all_on: Obj) -> None:
    dashboards = sorted(p.name for p in (REPO / "charts/mmo/dashboards").glob("*.json"))
    cms = by_kind(render(values_all_on), "ConfigMap")
    assert sorted(k for cm in cms for k in cm["data"]) == dashboards
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "mmo"}
        ((name, text),) = cm["data"].items()
        assert text.strip() == (REPO / "charts/mmo/dashboards" / name).read_text().strip()
    custom = by_kind(
        render(
            {
                "dashboards": {
                    "label": "grafana.io/dashboard",
                    "labelValue": "mmo",
                    "namespace": "monitoring",
                }
            }
        ),
        "ConfigMap",
    )
    assert {cm["metadata"]["labels"]["grafana.io/dashboard"] for cm in custom} == {"mmo"}
    assert {cm["metadata"]["namespace"] for cm in custom} == {"monitoring"}
    assert by_kind(render({"dashboards": {"enabled": False}}), "ConfigMap") == []


def test_prometheus_rule_thresholds_default_to_the_rules_file(render: Any) -> None:
    rule = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    thresholds_file = yaml.safe_load((REPO / "charts/mmo/rules/mmo-thresholds.yaml").read_text())
    assert groups["mmo-thresholds"] == thresholds_file["groups"][0]
    for path in ("mmo-serving.yaml", "mmo-operator.yaml"):
        for group in yaml.safe_load((REPO / "charts/mmo/rules" / path).read_text())["groups"]:
            assert groups[group["name"]] == group


def test_prometheus_rule_per_model_latency_targets(render: Any, values_all_on: Obj) -> None:
    values_all_on["prometheusRule"]["latencyTargetMs"] = 1250
    values_all_on["prometheusRule"]["expertBalancednessThreshold"] = 1.25
    rule = one(render(values_all_on), "PrometheusRule")
    (group,) = [g for g in rule["spec"]["groups"] if g["name"] == "mmo-thresholds"]
    records = [(r["record"], r["expr"], r.get("labels")) for r in group["rules"]]
    assert ("mmo:latency_target_seconds:default", "vector(1.25)", None) in records
    assert ("mmo:latency_target_seconds", "vector(0.8)", {"model": "private-vqa"}) in records
    assert ("mmo:latency_target_seconds", "vector(1.5)", {"model": "hybrid-chat"}) in records
    assert ("mmo:expert_balancedness_threshold", "vector(1.25)", None) in records


def test_notes_tell_how_to_start(notes: Any, values_user_tls: Obj) -> None:
    text = notes(None)
    assert "kubectl -n mmo-system rollout status deploy/mmo" in text
    assert "certificate from cert-manager" in text
    assert "grafana_dashboard=1" in text
    # KubeRay is a prerequisite, installed with its own chart (not a dependency of this one)
    assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0" in text
    assert "certificate from Secret mmo-webhook-tls" in notes(values_user_tls)
