"""Generated NetworkPolicies per mode, and exactly which flows they let out (or in)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.api import MultimodalModel
from mmo_operator.api.parse import parse_model
from mmo_operator.builders.networkpolicy import NetworkPeers, build_network_policies, client_peers
from mmo_operator.builders.pod_env import OFFLINE_ENV, base_env
from mmo_operator.policy.admission import service_namespace
from networkpolicy_flows import Endpoint, external, is_allowed, leaving_namespace, pod

ROOT = Path(__file__).resolve().parents[2]
NS = "ml"


def model(sample: str, **isolation: Any) -> MultimodalModel:
    doc = yaml.safe_load((ROOT / "manifests/samples" / sample).read_text())
    doc["metadata"]["namespace"] = NS
    doc["spec"]["isolation"].update(copy.deepcopy(isolation))
    return parse_model(doc)


MODES = {
    "private": "private-vqa.yaml",
    "hybrid": "hybrid-vqa.yaml",
    "federated": "federated-vqa.yaml",
}


OPERATOR = {"app.kubernetes.io/name": "mmo", "app.kubernetes.io/component": "operator"}


def model_pods(name: str) -> list[Endpoint]:
    """The labels of the pod templates (builders/rayservice.py) and KubeRay's own."""
    lab = {"serving.mmo.dev/model": name}
    return [
        pod(
            "head",
            NS,
            {**lab, "serving.mmo.dev/role": "head", "ray.io/node-type": "head"},
            "10.0.1.10",
        ),
        pod(
            "worker",
            NS,
            {**lab, "serving.mmo.dev/role": "worker", "ray.io/node-type": "worker"},
            "10.0.1.11",
        ),
    ]


# Everything else the model might talk to, inside and outside the cluster.
OTHERS = [
    pod("stranger", NS, {}, "10.0.1.21"),
    pod("vqa-client", NS, {"app": "vqa-client"}, "10.0.1.20"),
    pod("other-model", NS, {"serving.mmo.dev/model": "someone-else"}, "10.0.1.30"),
    pod("client", "apps", {}, "10.0.2.5", {"mmo.dev/clients": "true"}),
    pod("apps2-pod", "apps2", {}, "10.0.3.3"),
    pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.0.0.10"),
    pod("fake-dns", "apps2", {"k8s-app": "kube-dns"}, "10.0.3.4"),
    pod("prometheus", "monitoring", {"app": "prometheus"}, "10.0.4.4"),
    pod("kuberay", "kuberay", {"app.kubernetes.io/name": "kuberay-operator"}, "10.0.5.5"),
    pod("superlink", "federation", {"app": "superlink"}, "10.0.6.6"),
    external("cloud", "203.0.113.9"),
    external("aggregator-ip", "10.96.40.7"),
    external("internet", "8.8.8.8"),
    external("internet6", "2001:4860:4860::8888"),
    pod("mmo-operator", "mmo-system", OPERATOR, "10.0.7.7"),
    external("apiserver", "172.18.0.2"),  # the kubernetes Service's endpoint
]
PORTS = [
    (53, "UDP"), (53, "TCP"), (80, "TCP"), (443, "TCP"), (6379, "TCP"), (6443, "TCP"),
    (8000, "TCP"), (8080, "TCP"), (8265, "TCP"), (9092, "TCP"), (10001, "TCP"),
]  # fmt: skip

DNS = {(s, "kube-dns", 53, p) for s in ("head", "worker") for p in ("UDP", "TCP")}
EXPECTED_LEAVING = {
    "private": DNS,
    "hybrid": DNS | {(s, "cloud", 443, "TCP") for s in ("head", "worker")},
    "federated": DNS
    | {(s, d, 9092, "TCP") for s in ("head", "worker") for d in ("superlink", "aggregator-ip")},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_exactly_these_flows_leave_the_namespace(mode: str) -> None:
    m = model(MODES[mode])
    pols = build_network_policies(m)
    pods = model_pods(m.name)
    assert leaving_namespace(pols, pods, pods + OTHERS, PORTS) == EXPECTED_LEAVING[mode]


@pytest.mark.parametrize("mode", list(MODES))
def test_egress_inside_the_namespace_only_to_the_ray_cluster(mode: str) -> None:
    m = model(MODES[mode])
    pols = build_network_policies(m)
    head, worker = model_pods(m.name)
    for port, proto in PORTS:
        assert is_allowed(pols, head, worker, port, proto)
        assert is_allowed(pols, worker, head, port, proto)
        for other in OTHERS:
            if other.namespace == NS:
                assert not is_allowed(pols, head, other, port, proto), (other.name, port)


def _ingress(pols: list[dict[str, Any]], name: str) -> set[tuple[str, str, int]]:
    return {
        (src.name, dst.name, port)
        for src in OTHERS
        for dst in model_pods(name)
        for port, proto in PORTS
        if is_allowed(pols, src, dst, port, proto)
    }


@pytest.mark.parametrize(
    "mode,clients",
    [
        # the private sample rebalances: the operator reads /v1/expert-load
        ("private", {"vqa-client", "mmo-operator"}),
        ("hybrid", {"client"}),
        ("federated", {"vqa-client"}),
    ],
)
def test_who_may_reach_the_model(mode: str, clients: set[str]) -> None:
    m = model(MODES[mode])
    assert m.spec.experts.rebalance.enabled == ("mmo-operator" in clients)
    got = _ingress(build_network_policies(m), m.name)
    expected = {
        *((c, p, 8000) for c in clients for p in ("head", "worker")),
        *(("prometheus", p, 8080) for p in ("head", "worker")),
        # KubeRay drives Serve through the dashboard and health-checks the Serve proxy
        *(("kuberay", p, port) for p in ("head", "worker") for port in (8265, 8000)),
    }
    assert got == expected


def test_private_sample_clients_and_no_clients_at_all() -> None:
    m = model("private-vqa.yaml")
    assert m.spec.isolation.allowed_clients, "sample lists its clients"
    nobody = model("private-vqa.yaml", allowedClients=None)
    got = _ingress(build_network_policies(nobody), nobody.name)
    # no clients: only the operator, which reads the expert load for rebalancing, and
    # KubeRay's health check of the Serve proxy
    assert {src for src, _, port in got if port == 8000} == {"mmo-operator", "kuberay"}
    (network,) = [
        p for p in build_network_policies(nobody) if p["metadata"]["name"].endswith("-network")
    ]
    served = [
        r
        for r in network["spec"]["ingress"]
        if {"protocol": "TCP", "port": 8000} in r.get("ports", [])
    ]
    assert len(served) == 2, "KubeRay's health check and the operator's load reads only"


def test_operator_reaches_the_serve_port_only_from_its_namespace() -> None:
    m = model("private-vqa.yaml")
    pols = build_network_policies(m, NetworkPeers(operator_namespace="mmo-system"))
    (head, _) = model_pods(m.name)
    here = pod(
        "op", "mmo-system", OPERATOR, "10.0.7.8", {"kubernetes.io/metadata.name": "mmo-system"}
    )
    elsewhere = pod("op2", "apps2", OPERATOR, "10.0.3.9", {"kubernetes.io/metadata.name": "apps2"})
    assert is_allowed(pols, here, head, 8000)
    assert not is_allowed(pols, here, head, 6379)
    assert not is_allowed(pols, elsewhere, head, 8000)


APISERVER = ("172.18.0.2/32", "fd00::1/128")


@pytest.mark.parametrize("mode", list(MODES))
def test_apiserver_cidrs_open_exactly_the_autoscaler_flows(mode: str) -> None:
    """--apiserver-cidr: the head (the Ray autoscaler's pod) reaches the API server on
    443 and 6443; the workers do not, and nothing else opens."""
    m = model(MODES[mode])
    pols = build_network_policies(m, NetworkPeers(apiserver_cidrs=APISERVER))
    pods = model_pods(m.name)
    autoscaler = {("head", "apiserver", 443, "TCP"), ("head", "apiserver", 6443, "TCP")}
    assert leaving_namespace(pols, pods, pods + OTHERS, PORTS) == EXPECTED_LEAVING[mode] | (
        autoscaler
    )
    assert _ingress(pols, m.name) == _ingress(build_network_policies(m), m.name)
    (policy,) = [p for p in pols if p["metadata"]["name"] == f"{m.name}-apiserver"]
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"serving.mmo.dev/model": m.name, "serving.mmo.dev/role": "head"}
    }
    assert policy["spec"]["policyTypes"] == ["Egress"]
    v6 = external("apiserver6", "fd00::1")
    assert is_allowed(pols, pods[0], v6, 6443) and not is_allowed(pols, pods[1], v6, 6443)


def test_without_apiserver_cidrs_nobody_reaches_the_api_server() -> None:
    m = model("private-vqa.yaml")
    names = [p["metadata"]["name"] for p in build_network_policies(m)]
    assert f"{m.name}-apiserver" not in names
    head = model_pods(m.name)[0]
    api = OTHERS[-1]
    assert api.name == "apiserver"
    assert not any(is_allowed(build_network_policies(m), head, api, p) for p in (443, 6443))


def test_names_labels_and_order() -> None:
    for mode, sample in MODES.items():
        m = model(sample)
        pols = build_network_policies(m)
        names = [p["metadata"]["name"] for p in pols]
        # what always travels together is one object: one write per model, not five
        suffixes = ["network"] if mode == "private" else ["network", "egress"]
        assert names == [f"{m.name}-{s}" for s in suffixes]
        for p in pols:
            assert p["apiVersion"] == "networking.k8s.io/v1" and p["kind"] == "NetworkPolicy"
            assert p["metadata"]["namespace"] == NS
            assert p["metadata"]["labels"]["serving.mmo.dev/model"] == m.name
            assert p["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mmo-operator"
            assert p["spec"]["podSelector"] == {"matchLabels": {"serving.mmo.dev/model": m.name}}
        assert pols[0]["spec"]["policyTypes"] == ["Ingress", "Egress"], "default deny"


def test_monitoring_namespace_is_configurable() -> None:
    m = model("private-vqa.yaml")
    pols = build_network_policies(m, NetworkPeers(monitoring_namespace="observability"))
    prom = pod("prom", "observability", {}, "10.0.9.9")
    head = model_pods(m.name)[0]
    assert is_allowed(pols, prom, head, 8080)
    assert not is_allowed(pols, OTHERS[7], head, 8080)  # the default "monitoring" no more


def test_hybrid_endpoint_port_and_kuberay_namespace() -> None:
    m = model(
        "hybrid-vqa.yaml",
        hybrid={
            "endpoint": "https://llm.example.com:8443/v1",
            "cidrs": ["203.0.113.0/24"],
            "credentialsSecret": "k",
        },
    )
    pols = build_network_policies(m, NetworkPeers(kuberay_namespace="ray-system"))
    head = model_pods(m.name)[0]
    cloud = OTHERS[10]
    assert is_allowed(pols, head, cloud, 8443) and not is_allowed(pols, head, cloud, 443)
    there = pod("kuberay2", "ray-system", {"app.kubernetes.io/name": "kuberay-operator"})
    assert is_allowed(pols, there, head, 8265)
    assert not is_allowed(pols, OTHERS[8], head, 8265), "the default namespace no more"


def test_without_the_egress_policy_hybrid_is_private() -> None:
    m = model("hybrid-vqa.yaml")
    pols = [p for p in build_network_policies(m) if not p["metadata"]["name"].endswith("-egress")]
    pods = model_pods(m.name)
    assert leaving_namespace(pols, pods, pods + OTHERS, PORTS) == DNS


def test_service_namespace() -> None:
    assert service_namespace("superlink.federation.svc.cluster.local") == "federation"
    assert service_namespace("superlink.federation.svc") == "federation"
    assert service_namespace("superlink.example.com") is None
    assert service_namespace("10.0.0.1") is None


@pytest.mark.parametrize("mode", list(MODES))
def test_pod_env_turns_hub_and_telemetry_off(mode: str) -> None:
    env = {e["name"]: e["value"] for e in base_env(model(MODES[mode]))}
    for key in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
    ):
        assert env[key] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert set(OFFLINE_ENV) <= set(env)
    assert all("valueFrom" not in e for e in base_env(model(MODES[mode])))
    assert "MMO_ISOLATION_MODE" not in env  # nothing read it


def test_render_yaml_is_plain_data() -> None:
    for sample in MODES.values():
        text = yaml.safe_dump(build_network_policies(model(sample)))
        assert yaml.safe_load(text) == build_network_policies(model(sample))


@pytest.mark.parametrize("mode", list(MODES))
def test_policies_validate_against_the_kubernetes_schema(mode: str) -> None:
    import kubernetes_validate as kv

    for policy in build_network_policies(
        model(MODES[mode]), NetworkPeers(apiserver_cidrs=APISERVER)
    ):
        kv.validate(policy, kv.latest_version(), strict=True)


def test_render_and_operator_take_apiserver_cidrs(capsys: pytest.CaptureFixture[str]) -> None:
    from mmo_operator.cli import main

    sample = str(ROOT / "manifests/samples/private-vqa.yaml")
    assert main(["render", sample, "--apiserver-cidr", "172.18.0.2"]) == 0
    out = capsys.readouterr().out
    assert "&id" not in out and "*id" not in out  # no YAML anchors for kubectl users
    docs = list(yaml.safe_load_all(out))
    (policy,) = [d for d in docs if d["metadata"]["name"].endswith("-apiserver")]
    assert policy["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]
    for bad in ("10.0.0.5/24", "apiserver.local"):
        with pytest.raises(SystemExit) as exit_:
            main(["render", sample, "--apiserver-cidr", bad])
        assert exit_.value.code == 2
        assert "--apiserver-cidr: not a CIDR" in capsys.readouterr().err


KUBERAY = {"app.kubernetes.io/name": "kuberay-operator"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
# Pods that claim the labels of the model's peers from namespaces that are not theirs.
FORGED = [
    pod(f"{who}-in-{ns}", ns, labels, f"10.9.{i}.{j}")
    for i, ns in enumerate(["attacker", NS, "default", "kube-system"])
    for j, (who, labels) in enumerate(
        [("kuberay", KUBERAY), ("operator", OPERATOR), ("prometheus", PROMETHEUS)]
    )
    if not (ns == NS and who == "prometheus")  # its own namespace's pods: allowedClients
]
EVERY_PORT = [*PORTS, (8001, "TCP"), (52365, "TCP"), (6380, "TCP")]


def _rebalancing(m: MultimodalModel, enabled: bool) -> MultimodalModel:
    m = m.model_copy(deep=True)
    m.spec.experts.rebalance.enabled = enabled
    return m


@pytest.mark.parametrize("rebalance", [False, True])
@pytest.mark.parametrize("mode", list(MODES))
def test_a_forged_label_in_another_namespace_reaches_nothing(mode: str, rebalance: bool) -> None:
    """Labelled as KubeRay, the mmo operator or Prometheus, a pod outside the peer's
    namespace reaches no port of the model: not the dashboard (8265, the Jobs API has
    no authentication), not the Serve port, not the metrics."""
    m = _rebalancing(model(MODES[mode]), rebalance)
    pols = build_network_policies(m, NetworkPeers(apiserver_cidrs=APISERVER))
    reached = {
        (src.name, dst.name, port)
        for src in FORGED
        for dst in model_pods(m.name)
        for port, proto in EVERY_PORT
        if is_allowed(pols, src, dst, port, proto)
    }
    assert reached == set()
    real = {p.name: p for p in OTHERS}
    head = model_pods(m.name)[0]
    assert is_allowed(pols, real["kuberay"], head, 8265)
    assert is_allowed(pols, real["prometheus"], head, 8080)
    assert is_allowed(pols, real["mmo-operator"], head, m.spec.serving.port) == rebalance


@pytest.mark.parametrize("mode", list(MODES))
def test_the_dashboard_and_serve_port_without_clients(mode: str) -> None:
    """No allowedClients: the dashboard and the Serve port are the KubeRay operator's (in
    its namespace) and, when rebalancing, the mmo operator's (in its namespace)."""
    m = _rebalancing(model(MODES[mode], allowedClients=None), True)
    pols = build_network_policies(m)
    everyone = OTHERS + FORGED
    for port in (8265, m.spec.serving.port):
        callers = {
            src.name
            for src in everyone
            for dst in model_pods(m.name)
            if is_allowed(pols, src, dst, port)
        }
        assert callers == ({"kuberay"} if port == 8265 else {"kuberay", "mmo-operator"})


@pytest.mark.parametrize("mode", list(MODES))
def test_every_peer_beyond_the_model_and_its_clients_names_its_namespace(mode: str) -> None:
    m = _rebalancing(model(MODES[mode]), True)
    clients = client_peers(m)  # the user's own choice of peers (spec.isolation)
    for policy in build_network_policies(m, NetworkPeers(apiserver_cidrs=APISERVER)):
        for rule in policy["spec"].get("ingress", []) + policy["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                own = peer == {"podSelector": {"matchLabels": {"serving.mmo.dev/model": m.name}}}
                if own or "ipBlock" in peer or peer in clients:
                    continue
                names = peer["namespaceSelector"]["matchLabels"]
                assert list(names) == ["kubernetes.io/metadata.name"], peer


S3_STORE = [
    pod("minio-here", NS, {"app": "minio"}, "10.0.1.40"),
    pod("minio-store", "store", {"app": "minio"}, "10.0.8.8"),
    pod("minio-elsewhere", "apps2", {"app": "minio"}, "10.0.3.40"),
    external("s3-cloud", "52.216.0.1"),
]


@pytest.mark.parametrize(
    "endpoint,store",
    [
        ("http://minio:9000", "minio-here"),
        ("http://minio.store.svc:9000", "minio-store"),
        ("https://minio.store.svc.cluster.local", "minio-store"),
        ("http://10.0.8.8:9000", "minio-store"),
    ],
)
@pytest.mark.parametrize("mode", list(MODES))
def test_workers_reach_the_s3_endpoint_and_nothing_else(
    mode: str, endpoint: str, store: str
) -> None:
    doc = yaml.safe_load((ROOT / "manifests/samples" / MODES[mode]).read_text())
    doc["metadata"]["namespace"] = NS
    doc["spec"]["model"]["source"] = "s3://weights/vqa"
    doc["spec"]["model"]["s3"] = {"endpoint": endpoint, "credentialsSecret": "s3-creds"}
    m = parse_model(doc)
    pols = build_network_policies(m)
    assert [p["metadata"]["name"] for p in pols][-1] == f"{m.name}-s3"
    port = 443 if endpoint.startswith("https") and endpoint.count(":") == 1 else 9000
    head, worker = model_pods(m.name)
    reached = {
        (src.name, dst.name, p)
        for src in (head, worker)
        for dst in S3_STORE
        for p, proto in [*PORTS, (9000, "TCP")]
        if is_allowed(pols, src, dst, p, proto)
    }
    assert reached == {("worker", store, port)}
    without = [p for p in pols if not p["metadata"]["name"].endswith("-s3")]
    assert not is_allowed(without, worker, next(e for e in S3_STORE if e.name == store), port)


def test_render_pins_the_peers_to_the_namespaces_given(capsys: pytest.CaptureFixture[str]) -> None:
    from mmo_operator.cli import main

    sample = str(ROOT / "manifests/samples/private-vqa.yaml")
    flags = ["--kuberay-namespace", "ray-system", "--operator-namespace", "ops"]
    assert main(["render", sample, *flags, "--monitoring-namespace", "obs"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    (network,) = [d for d in docs if d["metadata"]["name"].endswith("-network")]
    pinned = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in network["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]
    assert pinned == ["ray-system", "ops", "obs"]  # KubeRay, the operator (rebalancing), metrics
    with pytest.raises(SystemExit) as exit_:
        main(["render", sample, "--kuberay-namespace", "Ray_System"])
    assert exit_.value.code == 2
    assert "'Ray_System' is not a namespace name" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--pod-cidrs", "10.244.0.0/16,10.0.0.1/8", "'10.0.0.1/8' is not a CIDR"),
        ("--service-cidrs", "services", "'services' is not a CIDR"),
        ("--aggregator-namespaces", "federation,Kube_System", "'Kube_System' is not a namespace"),
        ("--operator-namespace", "", "'' is not a namespace name"),
    ],
)
def test_operator_refuses_bad_network_flags(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    from mmo_operator.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["operator", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err


def test_operator_flags_build_the_peers_and_the_cluster_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from mmo_operator.cli import cluster as oc
    from mmo_operator.policy.addresses import DEFAULT_POD_CIDRS, ClusterNetworks

    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        oc.register(parser.add_subparsers())
        return parser.parse_args(["operator", *argv])

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert oc.network_peers(parse()) == NetworkPeers()
    assert oc.cluster_networks(parse()) == ClusterNetworks()
    args = parse(
        "--service-cidrs", "10.32.0.0/16", "--aggregator-namespaces", "", "--pod-cidrs", "fd00::/64"
    )
    assert oc.cluster_networks(args) == ClusterNetworks(
        pod_cidrs=("fd00::/64",), service_cidrs=("10.32.0.0/16",), aggregator_namespaces=()
    )
    assert DEFAULT_POD_CIDRS != ("fd00::/64",)
    monkeypatch.setenv("POD_NAMESPACE", "mmo-prod")  # the chart's downward API
    assert oc.network_peers(parse()).operator_namespace == "mmo-prod"
