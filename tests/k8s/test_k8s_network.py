"""``mmo operator --apiserver-cidr``: the head's Ray autoscaler may reach the API server."""

from __future__ import annotations

from collections.abc import Callable

from operator_harness import (
    MMM,
    NETPOLS,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    model_doc,
    wait_for,
)

StartOperator = Callable[..., OperatorProcess]


def _policy_message(cluster: Cluster) -> str:
    return str((cluster.condition("tiny", "PolicyEnforced") or {}).get("message", ""))


def test_apiserver_cidrs_reach_the_model_policies(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    start_operator("--apiserver-cidr", "172.18.0.2", "--apiserver-cidr", "10.96.0.1/32")
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    policy = wait_for("tiny-apiserver", lambda: cluster.get(NETPOLS, "tiny-apiserver"))
    assert policy["spec"]["podSelector"]["matchLabels"]["serving.mmo.dev/role"] == "head"
    (rule,) = policy["spec"]["egress"]
    assert rule["to"] == [
        {"ipBlock": {"cidr": "172.18.0.2/32"}},
        {"ipBlock": {"cidr": "10.96.0.1/32"}},
    ]
    assert {p["port"] for p in rule["ports"]} == {443, 6443}
    message = wait_for("PolicyEnforced", lambda: _policy_message(cluster))
    assert "network (2 NetworkPolicies)" in message and "autoscaler" not in message


def test_without_apiserver_cidrs_the_condition_says_why_workers_do_not_scale(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    start_operator()
    cluster.create(MMM, model_doc())
    message = wait_for("PolicyEnforced", lambda: _policy_message(cluster))
    assert "the Ray autoscaler cannot reach the API server under default-deny" in message
    assert "--apiserver-cidr" in message
    assert cluster.get(NETPOLS, "tiny-apiserver") is None


def test_peer_namespaces_pin_the_policies_and_the_condition_names_unchecked_peers(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    start_operator("--kuberay-namespace", "ray-system", "--monitoring-namespace", "obs")
    hybrid = {
        "endpoint": "https://llm.example.com/v1",
        "cidrs": ["203.0.113.0/24"],
        "credentialsSecret": "cloud-key",
        "offloadDataClasses": ["public"],
    }
    cluster.create(MMM, model_doc(isolation={"mode": "hybrid", "hybrid": hybrid}))
    policy = wait_for("tiny-network", lambda: cluster.get(NETPOLS, "tiny-network"))
    pinned = [
        peer["namespaceSelector"]["matchLabels"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]
    assert pinned == [
        {"kubernetes.io/metadata.name": "ray-system"},
        {"kubernetes.io/metadata.name": "obs"},
    ]
    message = wait_for("PolicyEnforced", lambda: _policy_message(cluster))
    assert "hybrid endpoint llm.example.com is a DNS name" in message
