"""A small NetworkPolicy evaluator for the tests (pure), following Kubernetes semantics.

- A pod selected by no policy of a direction (``policyTypes``) is open in that
  direction; once selected by one, only what some rule of some selecting policy allows
  passes (policies add up: the union of their rules; there is no deny rule).
- A flow passes when the source's egress allows it *and* the destination's ingress
  allows it. Endpoints outside the cluster (``namespace=None``) have no policies.
- A rule with no ``from``/``to`` matches every peer; no ``ports`` matches every port.
  Peers: ``podSelector`` alone = pods of the policy's namespace; ``namespaceSelector``
  alone = every pod of the matching namespaces; both = ANDed; ``ipBlock`` = addresses
  in ``cidr`` but not in any ``except`` (checked against the endpoint's IP).
- ``policyTypes`` absent: Ingress, plus Egress when the policy has egress rules.
- Namespaces carry ``kubernetes.io/metadata.name: NAME`` automatically.
- Ports: numeric ``port`` with optional ``endPort``; protocol defaults to TCP. Named
  ports are not resolved (they match nothing here).

Known simplifications: ipBlock is applied to pod IPs as well (CNI-dependent in real
clusters), and Service DNAT is not modelled (address pods, not ClusterIPs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = Mapping[str, Any]
NS_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Endpoint:
    """A pod (``namespace`` set) or an address outside the cluster (``namespace=None``)."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def in_cluster(self) -> bool:
        return self.namespace is not None

    def ns_labels(self) -> dict[str, str]:
        out = dict(self.namespace_labels)
        if self.namespace is not None:
            out[NS_NAME_LABEL] = self.namespace
        return out


def pod(
    name: str,
    namespace: str,
    labels: Mapping[str, str] | None = None,
    ip: str | None = None,
    namespace_labels: Mapping[str, str] | None = None,
) -> Endpoint:
    return Endpoint(name, namespace, dict(labels or {}), ip, dict(namespace_labels or {}))


def external(name: str, ip: str) -> Endpoint:
    return Endpoint(name, None, {}, ip)


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics; ``{}`` matches everything."""
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def _in_ip_block(block: Obj, ip: str | None) -> bool:
    if ip is None:
        return False
    addr = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if addr.version != net.version or addr not in net:
        return False
    for exc in block.get("except") or []:
        ex = ipaddress.ip_network(exc, strict=False)
        if addr.version == ex.version and addr in ex:
            return False
    return True


def peer_matches(peer: Obj, policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return _in_ip_block(peer["ipBlock"], other.ip)
    if not other.in_cluster:
        return False  # pod/namespace selectors name pods only
    ns_sel = peer.get("namespaceSelector")
    pod_sel = peer.get("podSelector")
    if ns_sel is None:
        if other.namespace != policy_namespace:
            return False
    elif not selector_matches(ns_sel, other.ns_labels()):
        return False
    return selector_matches(pod_sel, other.labels) if pod_sel is not None else True


def port_matches(ports: list[Obj] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        start = p["port"]
        if not isinstance(start, int):
            continue  # named port: not resolved here
        end = p.get("endPort", start)
        if start <= port <= end:
            return True
    return False


def _types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _selecting(policies: Iterable[Obj], ep: Endpoint, direction: str) -> list[Obj]:
    return [
        p
        for p in policies
        if ep.in_cluster
        and p["metadata"].get("namespace", "default") == ep.namespace
        and direction in _types(p)
        and selector_matches(p["spec"].get("podSelector") or {}, ep.labels)
    ]


def _direction_allows(
    policies: Iterable[Obj], ep: Endpoint, other: Endpoint, port: int, protocol: str, way: str
) -> bool:
    direction, key, peers_key = (
        ("Egress", "egress", "to") if way == "out" else ("Ingress", "ingress", "from")
    )
    selecting = _selecting(policies, ep, direction)
    if not selecting:
        return True
    for p in selecting:
        ns = p["metadata"].get("namespace", "default")
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(peer, ns, other) for peer in peers):
                continue
            if port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def is_allowed(
    policies: Iterable[Obj],
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Would ``source`` reach ``destination:port/protocol`` under ``policies``?"""
    pols = list(policies)
    return _direction_allows(pols, source, destination, port, protocol, "out") and (
        _direction_allows(pols, destination, source, port, protocol, "in")
    )


Flow = tuple[str, str, int, str]  # (source name, destination name, port, protocol)


def allowed_flows(
    policies: Iterable[Obj],
    sources: Iterable[Endpoint],
    destinations: Iterable[Endpoint],
    ports: Iterable[tuple[int, str]],
) -> set[Flow]:
    """Every (source, destination, port, protocol) of the given universe that passes."""
    pols = list(policies)
    ports = list(ports)
    dests = list(destinations)
    return {
        (s.name, d.name, port, proto)
        for s in sources
        for d in dests
        if s != d
        for port, proto in ports
        if is_allowed(pols, s, d, port, proto)
    }


def leaving_namespace(
    policies: Iterable[Obj],
    sources: Iterable[Endpoint],
    universe: Iterable[Endpoint],
    ports: Iterable[tuple[int, str]],
) -> set[Flow]:
    """The allowed flows from ``sources`` to endpoints outside their namespace."""
    srcs = list(sources)
    namespaces = {s.namespace for s in srcs}
    outside = [e for e in universe if e.namespace not in namespaces]
    return allowed_flows(policies, srcs, outside, ports)
