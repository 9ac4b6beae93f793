"""The NetworkPolicies of a model, per isolation mode (pure: plain dicts).

Every pod of a model carries ``serving.mmo.dev/model: NAME`` (head and workers); the
policies select them by that label. NetworkPolicies are allow-lists that add up, so
the set below is read as "default deny, plus exactly these". Every peer that is not a
pod of the model itself is pinned to a named namespace (``kubernetes.io/metadata.name``,
which the API server sets and no user can forge) ANDed with its pod labels, because a
pod label alone is claimed by anyone who can create a pod. The namespaces come from
:class:`NetworkPeers` (``mmo operator --kuberay-namespace``, ``--operator-namespace``,
``--monitoring-namespace``; chart values):

``NAME-network``
    Everything that always travels together, in one object (one write, not five):
    ingress and egress are denied for every pod of the model except what its rules allow:

    - all ports between pods of the model, both ways (GCS 6379, raylets, object manager,
      workers, NCCL/gloo use ports chosen at run time);
    - from the KubeRay operator's pods (``app.kubernetes.io/name: kuberay-operator`` in
      the KubeRay namespace only), the dashboard port 8265 that it drives the RayService
      through (the Jobs API behind it has no authentication: nobody else may reach it)
      and the Serve port (``spec.serving.port``), where it health-checks the head's Serve
      proxy (``/-/healthz``) before putting the head behind the serve Service;
    - egress to kube-dns only: UDP and TCP 53 to pods ``k8s-app: kube-dns`` in the
      namespace ``kube-system``;
    - the Serve HTTP port (``spec.serving.port``) from ``spec.isolation.allowedClients``
      only: each entry is one peer, its namespace and pod selectors ANDed; a pod selector
      alone means this namespace; an entry with neither means every pod of this
      namespace. No entries: no such rule, and nobody may call. With
      ``spec.experts.rebalance.enabled`` the mmo operator's pods
      (``app.kubernetes.io/name: mmo``, ``app.kubernetes.io/component: operator``, in the
      operator's namespace only) may also call it: they read ``/v1/expert-load``;
    - Ray's Prometheus port 8080 from the monitoring namespace only.
``NAME-egress`` (hybrid and federated only)
    hybrid: the endpoint's CIDRs on its port (443 unless the URL names another).
    federated: the aggregator's CIDRs on its port; when the aggregator is a cluster
    Service name (``name.ns.svc[...]``) its namespace is allowed on that port too, because
    most CNIs apply policy after Service DNAT, so a ClusterIP range alone would not match.
    private: none (no such policy).
``NAME-s3`` (``s3://`` sources only)
    The worker pods (``serving.mmo.dev/role: worker``), which load the weights, to the
    ``s3.endpoint`` on its port (80/443 by scheme unless the URL names one). Admission
    guarantees the host is in the cluster: a Service of the model's namespace (a pod
    of this namespace), ``name.ns.svc[...]`` (a pod of namespace ``ns``), or an address
    in the cluster's ranges (that address). Policy applies after Service DNAT, so the
    object store's pods must listen on the port the URL names (Service port = target
    port, as MinIO's charts do).
``NAME-apiserver`` (only when the operator runs with ``--apiserver-cidr``)
    The head pods (``serving.mmo.dev/role: head``), where the Ray autoscaler runs as a
    sidecar (``enableInTreeAutoscaling``), to the API server's addresses on TCP 443 and
    6443: the autoscaler reads and scales the RayCluster through it. NetworkPolicy cannot
    name the API server portably (it is no pod; most CNIs match the endpoint address
    after the ``kubernetes`` Service's DNAT), so the addresses come from the operator's
    configuration; without them the autoscaler is cut off by the default deny, and
    ``PolicyEnforced`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mmo_operator.api import MultimodalModel
from mmo_operator.objects import Obj
from mmo_operator.policy.addresses import parse_ip
from mmo_operator.policy.admission import service_namespace, split_host_port

from .common import DASHBOARD_PORT, METRICS_PORT, MODEL_LABEL, ROLE_LABEL, metadata

NS_NAME_LABEL = "kubernetes.io/metadata.name"
DEFAULT_MONITORING_NAMESPACE = "monitoring"
DEFAULT_KUBERAY_NAMESPACE = "kuberay"  # where the install docs put KubeRay's chart
DEFAULT_OPERATOR_NAMESPACE = "mmo-system"  # the chart passes its release namespace
KUBERAY_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}
OPERATOR_LABELS = {"app.kubernetes.io/name": "mmo", "app.kubernetes.io/component": "operator"}
APISERVER_PORTS = (443, 6443)  # the kubernetes Service's port, and the usual endpoint port


@dataclass(frozen=True)
class NetworkPeers:
    """Where the model's peers outside its own pods run (operator flags, chart values)."""

    kuberay_namespace: str = DEFAULT_KUBERAY_NAMESPACE
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    monitoring_namespace: str = DEFAULT_MONITORING_NAMESPACE
    apiserver_cidrs: tuple[str, ...] = ()  # the API server's addresses, for the autoscaler


def in_namespace(namespace: str, pod_labels: dict[str, str] | None = None) -> Obj:
    """A peer pinned to the namespace named ``namespace`` (and these pod labels: ANDed)."""
    peer: Obj = {"namespaceSelector": {"matchLabels": {NS_NAME_LABEL: namespace}}}
    if pod_labels is not None:
        peer["podSelector"] = {"matchLabels": dict(pod_labels)}
    return peer


def model_selector(model: MultimodalModel) -> Obj:
    return {"matchLabels": {MODEL_LABEL: model.name}}


def _policy(
    model: MultimodalModel,
    suffix: str,
    types: list[str],
    *,
    ingress: list[Obj] | None = None,
    egress: list[Obj] | None = None,
    selector: Obj | None = None,
) -> Obj:
    spec: Obj = {"podSelector": selector or model_selector(model), "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(model, f"{model.name}-{suffix}", None),
        "spec": spec,
    }


def _selector(sel: Any) -> Obj:
    out: Obj = {}
    if sel is None:
        return out
    if sel.match_labels:
        out["matchLabels"] = dict(sel.match_labels)
    if sel.match_expressions:
        exprs = []
        for e in sel.match_expressions:
            expr: Obj = {"key": e.key, "operator": e.operator}
            if e.values is not None:
                expr["values"] = list(e.values)
            exprs.append(expr)
        out["matchExpressions"] = exprs
    return out


def client_peers(model: MultimodalModel) -> list[Obj]:
    peers = []
    for client in model.spec.isolation.allowed_clients or []:
        peer: Obj = {}
        if client.namespace_selector is not None:
            peer["namespaceSelector"] = _selector(client.namespace_selector)
        if client.pod_selector is not None:
            peer["podSelector"] = _selector(client.pod_selector)
        if not peer:  # {} is not a valid peer: say "every pod of this namespace"
            peer["podSelector"] = {}
        peers.append(peer)
    return peers


def _ip_peers(cidrs: list[str]) -> list[Obj]:
    return [{"ipBlock": {"cidr": c}} for c in cidrs]


def egress_rules(model: MultimodalModel) -> list[Obj]:
    """The mode's egress beyond DNS and the Ray cluster (empty in private mode)."""
    iso = model.spec.isolation
    if iso.mode == "hybrid" and iso.hybrid is not None:
        port = urlsplit(iso.hybrid.endpoint).port or 443
        return [{"to": _ip_peers(iso.hybrid.cidrs), "ports": [{"protocol": "TCP", "port": port}]}]
    if iso.mode == "federated" and iso.federated is not None:
        hp = split_host_port(iso.federated.aggregator)
        if hp is None:  # refused at admission; build nothing rather than guess a port
            return []
        host, port = hp
        peers = _ip_peers(iso.federated.cidrs)
        ns = service_namespace(host)
        if ns is not None:
            peers.append(in_namespace(ns))
        return [{"to": peers, "ports": [{"protocol": "TCP", "port": port}]}]
    return []


def s3_rules(model: MultimodalModel) -> list[Obj]:
    """Egress of the workers to the ``s3.endpoint`` of an ``s3://`` source (else empty)."""
    s3 = model.spec.model.s3
    if s3 is None or not model.spec.model.source.startswith("s3://"):
        return []
    parts = urlsplit(s3.endpoint)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # refused at admission
        return []
    ip = parse_ip(host)
    ns = service_namespace(host)
    if ip is not None:
        peer: Obj = {"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}
    elif ns is not None:
        peer = in_namespace(ns)
    elif "." not in host.rstrip(".") and host:
        peer = {"podSelector": {}}  # a Service of the model's own namespace
    else:  # not in the cluster: refused at admission, so open nothing
        return []
    return [{"to": [peer], "ports": [{"protocol": "TCP", "port": port}]}]


def build_network_policies(model: MultimodalModel, peers: NetworkPeers | None = None) -> list[Obj]:
    """The NetworkPolicies of ``model``: ``NAME-network``, then those its mode, source
    and ``peers.apiserver_cidrs`` ask for."""
    peers = peers or NetworkPeers()
    own = {"podSelector": model_selector(model)}
    serve_port = [{"protocol": "TCP", "port": model.spec.serving.port}]
    serve_ingress = []
    if model.spec.isolation.allowed_clients:
        serve_ingress.append({"from": client_peers(model), "ports": serve_port})
    if model.spec.experts.rebalance.enabled:
        operator = in_namespace(peers.operator_namespace, OPERATOR_LABELS)
        serve_ingress.append({"from": [operator], "ports": serve_port})
    kuberay = in_namespace(peers.kuberay_namespace, KUBERAY_LABELS)
    kube_dns = in_namespace("kube-system", {"k8s-app": "kube-dns"})
    metrics_ingress = {
        "from": [in_namespace(peers.monitoring_namespace)],
        "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
    }
    kuberay_ingress = {
        "from": [kuberay],
        "ports": [
            {"protocol": "TCP", "port": DASHBOARD_PORT},
            {"protocol": "TCP", "port": model.spec.serving.port},
        ],
    }
    dns = {
        "to": [kube_dns],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    policies = [
        _policy(
            model,
            "network",
            ["Ingress", "Egress"],
            ingress=[{"from": [own]}, kuberay_ingress, *serve_ingress, metrics_ingress],
            egress=[{"to": [own]}, dns],
        )
    ]
    egress = egress_rules(model)
    if egress:
        policies.append(_policy(model, "egress", ["Egress"], egress=egress))
    storage = s3_rules(model)
    if storage:
        workers = {"matchLabels": {MODEL_LABEL: model.name, ROLE_LABEL: "worker"}}
        policies.append(_policy(model, "s3", ["Egress"], egress=storage, selector=workers))
    if peers.apiserver_cidrs:
        head = {"matchLabels": {MODEL_LABEL: model.name, ROLE_LABEL: "head"}}
        rule = {
            "to": _ip_peers(list(peers.apiserver_cidrs)),
            "ports": [{"protocol": "TCP", "port": port} for port in APISERVER_PORTS],
        }
        policies.append(_policy(model, "apiserver", ["Egress"], egress=[rule], selector=head))
    return policies
