"""The NetworkPolicy evaluator itself follows Kubernetes semantics."""

from __future__ import annotations

from typing import Any

import pytest

from networkpolicy_flows import (
    external,
    is_allowed,
    peer_matches,
    pod,
    port_matches,
    selector_matches,
)


def np(name: str, ns: str, selector: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": selector, **spec},
    }


A = pod("a", "ns1", {"app": "a"}, "10.0.0.1")
B = pod("b", "ns1", {"app": "b"}, "10.0.0.2")
C = pod("c", "ns2", {"app": "c"}, "10.0.1.3", {"team": "x"})
NET = external("net", "8.8.8.8")


def test_no_policy_means_open() -> None:
    assert is_allowed([], A, B, 80)
    assert is_allowed([], A, NET, 443)


def test_selected_pod_is_default_deny_in_listed_directions_only() -> None:
    deny_in = np("deny", "ns1", {"matchLabels": {"app": "b"}}, policyTypes=["Ingress"])
    assert not is_allowed([deny_in], A, B, 80)
    assert is_allowed([deny_in], B, A, 80)  # B's egress is not restricted
    deny_all = np("deny", "ns1", {}, policyTypes=["Ingress", "Egress"])
    assert not is_allowed([deny_all], A, NET, 443)
    assert not is_allowed([deny_all], NET, A, 443)
    assert is_allowed([deny_all], C, NET, 443)  # other namespace: unaffected


def test_policy_types_default() -> None:
    only_ingress = np("p", "ns1", {}, ingress=[])  # no policyTypes, no egress: Ingress only
    assert not is_allowed([only_ingress], C, A, 80)
    assert is_allowed([only_ingress], A, C, 80)
    # egress rules present: Ingress and Egress both restricted for the selected pod A
    only_a = {"matchLabels": {"app": "a"}}
    with_egress = np("p", "ns1", only_a, egress=[{"to": [{"podSelector": {}}]}])
    assert not is_allowed([with_egress], A, NET, 80)
    assert is_allowed([with_egress], A, B, 80)
    assert not is_allowed([with_egress], B, A, 80)


def test_union_of_allows() -> None:
    deny = np("deny", "ns1", {}, policyTypes=["Egress"], egress=[])
    web = np("web", "ns1", {}, policyTypes=["Egress"], egress=[{"ports": [{"port": 443}]}])
    udp53 = [{"ports": [{"port": 53, "protocol": "UDP"}]}]
    dns = np("dns", "ns1", {}, policyTypes=["Egress"], egress=udp53)
    pols = [deny, web, dns]
    assert is_allowed(pols, A, NET, 443)
    assert is_allowed(pols, A, NET, 53, "UDP")
    assert not is_allowed(pols, A, NET, 53, "TCP")
    assert not is_allowed([deny, dns], A, NET, 443)


def test_both_ends_must_allow() -> None:
    egress_ok = np("e", "ns1", {"matchLabels": {"app": "a"}}, policyTypes=["Egress"], egress=[{}])
    ingress_no = np("i", "ns2", {}, policyTypes=["Ingress"], ingress=[])
    assert is_allowed([egress_ok], A, C, 80)
    assert not is_allowed([egress_ok, ingress_no], A, C, 80)


def test_ip_block_with_except() -> None:
    p = np(
        "e", "ns1", {}, policyTypes=["Egress"],
        egress=[{"to": [{"ipBlock": {"cidr": "8.8.0.0/16", "except": ["8.8.8.0/24"]}}]}],
    )  # fmt: skip
    assert is_allowed([p], A, external("x", "8.8.4.4"), 53)
    assert not is_allowed([p], A, NET, 53)
    assert not is_allowed([p], A, external("v6", "2001:db8::1"), 53)


@pytest.mark.parametrize(
    "peer,other,expected",
    [
        ({"podSelector": {"matchLabels": {"app": "b"}}}, B, True),
        ({"podSelector": {"matchLabels": {"app": "c"}}}, C, False),  # pod selector alone: own ns
        ({"namespaceSelector": {"matchLabels": {"team": "x"}}}, C, True),
        ({"namespaceSelector": {}}, C, True),
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns2"}}}, C, True),
        (
            {
                "namespaceSelector": {"matchLabels": {"team": "x"}},
                "podSelector": {"matchLabels": {"app": "z"}},
            },
            C,
            False,
        ),
        ({"podSelector": {}}, NET, False),  # selectors never match outside addresses
        ({"ipBlock": {"cidr": "10.0.0.0/24"}}, B, True),
    ],
)
def test_peer_semantics(peer: dict[str, Any], other: Any, expected: bool) -> None:
    assert peer_matches(peer, "ns1", other) is expected


def test_selector_expressions() -> None:
    labels = {"tier": "web", "env": "prod"}
    assert selector_matches({}, labels)

    def expr(key: str, op: str, *values: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": key, "operator": op, "values": list(values)}]}

    assert selector_matches(expr("tier", "In", "web"), labels)
    assert not selector_matches(expr("env", "NotIn", "prod"), labels)
    assert selector_matches(expr("x", "DoesNotExist"), labels)
    assert not selector_matches(expr("x", "Exists"), labels)
    with pytest.raises(ValueError, match="unknown selector operator"):
        selector_matches({"matchExpressions": [{"key": "x", "operator": "Near"}]}, labels)


def test_ports() -> None:
    assert port_matches(None, 1, "TCP")
    assert port_matches([{"port": 8000, "endPort": 8010}], 8005, "TCP")
    assert not port_matches([{"port": 8000, "endPort": 8010}], 8011, "TCP")
    assert not port_matches([{"port": 53}], 53, "UDP")  # protocol defaults to TCP
    assert port_matches([{"protocol": "UDP"}], 9, "UDP")
    assert not port_matches([{"port": "http"}], 80, "TCP")  # named ports unresolved
