"""``mmo render`` and ``mmo operator``.

``render`` needs only the core (pydantic, PyYAML); ``operator`` imports kopf and the
kubernetes client when it runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from typing import Any

import yaml

from mmo_operator.api.problems import InvalidResource
from mmo_operator.builders.networkpolicy import (
    DEFAULT_KUBERAY_NAMESPACE,
    DEFAULT_MONITORING_NAMESPACE,
    DEFAULT_OPERATOR_NAMESPACE,
    NetworkPeers,
)
from mmo_operator.planning.rebalance_load import DEFAULT_LOAD_URL
from mmo_operator.policy.addresses import (
    DEFAULT_AGGREGATOR_NAMESPACES,
    DEFAULT_POD_CIDRS,
    DEFAULT_SERVICE_CIDRS,
    ClusterNetworks,
    parse_cidrs,
)


class _NoAliases(yaml.SafeDumper):
    """Repeats shared values instead of writing &id001 anchors (kubectl users read this)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def cmd_render(args: argparse.Namespace) -> int:
    from mmo_operator.builders import build_children
    from mmo_operator.builders.app_args import plan_and_app_args
    from mmo_operator.validation import validate_file

    try:
        validated = validate_file(args.file)
        plan, app_args = plan_and_app_args(validated, loads=_loads(args.loads))
    except InvalidResource as e:
        for p in e.problems:
            print(f"{args.file}: {p}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    children = build_children(
        validated.model,
        plan,
        args=app_args,
        pod_monitor=not args.no_pod_monitor,
        peers=network_peers(args),
    )
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": children}, indent=2))
    else:
        header = (
            f"# Children of MultimodalModel {validated.model.name} as the operator creates "
            "them\n# (the operator also sets ownerReferences to the MultimodalModel's uid).\n"
        )
        sys.stdout.write(header + yaml.dump_all(children, Dumper=_NoAliases, sort_keys=False))
    return 0


def cidr(value: str) -> str:
    """An argparse type: an IPv4/IPv6 CIDR (a bare address means /32 or /128), canonical."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a CIDR ({e})") from e


_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def namespace(value: str) -> str:
    """An argparse type: a namespace name (a DNS label)."""
    if not _NAMESPACE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a namespace name (lower-case letters, digits and '-', at most 63)"
        )
    return value


def namespaces(value: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list of namespace names (may be empty)."""
    return tuple(namespace(v.strip()) for v in value.split(",") if v.strip())


def cidr_list(value: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated CIDR list."""
    try:
        return parse_cidrs(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def network_peers(args: argparse.Namespace) -> NetworkPeers:
    return NetworkPeers(
        kuberay_namespace=args.kuberay_namespace,
        operator_namespace=args.operator_namespace,
        monitoring_namespace=args.monitoring_namespace,
        apiserver_cidrs=tuple(args.apiserver_cidr),
    )


def add_peer_flags(p: argparse.ArgumentParser) -> None:
    """The namespaces that pin the model's NetworkPolicy peers (``mmo operator`` and
    ``mmo render``)."""
    p.add_argument(
        "--kuberay-namespace",
        type=namespace,
        default=DEFAULT_KUBERAY_NAMESPACE,
        metavar="NS",
        help="namespace of the KubeRay operator: only its pods there reach a model's Ray "
        "dashboard (8265) and Serve port (default %(default)s)",
    )
    p.add_argument(
        "--operator-namespace",
        type=namespace,
        default=os.environ.get("POD_NAMESPACE") or DEFAULT_OPERATOR_NAMESPACE,
        metavar="NS",
        help="namespace of the mmo operator: only its pods there read a rebalancing model's "
        "expert load on the Serve port (default: env POD_NAMESPACE, else %(default)s)",
    )
    p.add_argument(
        "--monitoring-namespace",
        type=namespace,
        default=DEFAULT_MONITORING_NAMESPACE,
        metavar="NS",
        help="namespace whose pods may scrape a model's metrics port (default %(default)s)",
    )


def cluster_networks(args: argparse.Namespace) -> ClusterNetworks:
    return ClusterNetworks(
        pod_cidrs=args.pod_cidrs,
        service_cidrs=args.service_cidrs,
        aggregator_namespaces=args.aggregator_namespaces,
    )


APISERVER_CIDR_HELP = (
    "the Kubernetes API server's addresses (repeat for several): the model's head pods, "
    "where the Ray autoscaler runs, may reach them on TCP 443 and 6443 despite the "
    "default-deny NetworkPolicy (NAME-apiserver); give the endpoints of the `kubernetes` "
    "Service (and its ClusterIP for CNIs that match before DNAT)"
)


def _loads(path: str | None) -> Any:
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cmd_operator(args: argparse.Namespace) -> int:
    import kopf

    from mmo_operator.handlers import Options, build_registry
    from mmo_operator.planning.rebalance_load import check_url_template
    from mmo_operator.rebalance_timer import RebalanceOptions

    try:
        check_url_template(args.expert_load_url)
    except ValueError as e:
        print(f"mmo operator: --expert-load-url: {e}", file=sys.stderr)
        return 2
    for flag, value in (
        ("--expert-load-timeout", args.expert_load_timeout),
        ("--rebalance-check-seconds", args.rebalance_check_seconds),
        ("--rebalance-interval-override", args.rebalance_interval_override),
    ):
        if value is not None and not value > 0:
            print(f"mmo operator: {flag} must be > 0, got {value}", file=sys.stderr)
            return 2
    if args.namespace and args.all_namespaces:
        print("mmo operator: give --namespace or --all-namespaces, not both", file=sys.stderr)
        return 2
    if args.webhook_cert and not args.webhook_key:
        print("mmo operator: --webhook-cert needs --webhook-key", file=sys.stderr)
        return 2
    options = Options(
        webhook=not args.no_webhook,
        webhook_port=args.webhook_port,
        webhook_host=args.webhook_host,
        webhook_cert=args.webhook_cert,
        webhook_key=args.webhook_key,
        webhook_insecure=args.webhook_insecure,
        resync_seconds=args.resync_seconds,
        metrics_port=args.metrics_port or None,
        peering_lifetime=args.peering_lifetime,
        peers=network_peers(args),
        cluster=cluster_networks(args),
        rebalance=RebalanceOptions(
            url_template=args.expert_load_url,
            timeout_s=args.expert_load_timeout,
            check_seconds=args.rebalance_check_seconds,
            interval_override=args.rebalance_interval_override,
        ),
    )
    kopf.configure(verbose=args.verbose, debug=args.debug)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    kopf.run(
        registry=build_registry(options),
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=True if args.standalone else None,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=liveness,
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "render", help="print every child object the operator creates for a MultimodalModel"
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.add_argument("--loads", metavar="LOADS.json", help="plan the placement from these loads")
    p.add_argument(
        "--no-pod-monitor",
        action="store_true",
        help="render as for a cluster without the monitoring CRDs",
    )
    p.add_argument(
        "--apiserver-cidr",
        action="append",
        default=[],
        type=cidr,
        metavar="CIDR",
        help="render as for `mmo operator --apiserver-cidr`: " + APISERVER_CIDR_HELP,
    )
    add_peer_flags(p)
    p.set_defaults(func=cmd_render)

    p = subparsers.add_parser(
        "operator",
        help="run the operator (in-cluster login, or KUBECONFIG)",
        description="Run the mmo operator (kopf) in this process; the container's entry point.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeat for several; globs as in kopf)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    p.add_argument(
        "--no-webhook",
        action="store_true",
        help="do not serve the validating admission webhook (cluster without the webhook "
        "configuration, tests)",
    )
    p.add_argument(
        "--apiserver-cidr",
        action="append",
        default=[],
        type=cidr,
        metavar="CIDR",
        help=APISERVER_CIDR_HELP,
    )
    add_peer_flags(p)
    p.add_argument(
        "--pod-cidrs",
        type=cidr_list,
        default=DEFAULT_POD_CIDRS,
        metavar="CIDR,...",
        help="the cluster's pod CIDRs: admission refuses hybrid/federated egress and "
        "endpoints there (default: the common distributions', " + ",".join(DEFAULT_POD_CIDRS) + ")",
    )
    p.add_argument(
        "--service-cidrs",
        type=cidr_list,
        default=DEFAULT_SERVICE_CIDRS,
        metavar="CIDR,...",
        help="the cluster's Service CIDRs, refused as the pod CIDRs (default: "
        + ",".join(DEFAULT_SERVICE_CIDRS)
        + ")",
    )
    p.add_argument(
        "--aggregator-namespaces",
        type=namespaces,
        default=DEFAULT_AGGREGATOR_NAMESPACES,
        metavar="NS,...",
        help="namespaces where an in-cluster federated aggregator (NAME.NS.svc) may run; "
        "'' for none (default: " + ",".join(DEFAULT_AGGREGATOR_NAMESPACES) + ")",
    )
    p.add_argument("--webhook-port", type=int, default=9443)
    p.add_argument("--webhook-host", default=None, help="host name in the webhook's URL")
    p.add_argument("--webhook-cert", default=None, metavar="PEM", help="TLS certificate")
    p.add_argument("--webhook-key", default=None, metavar="PEM", help="TLS private key")
    p.add_argument(
        "--webhook-insecure", action="store_true", help="serve the webhook over plain HTTP"
    )
    p.add_argument(
        "--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off)"
    )
    p.add_argument("--liveness-port", type=int, default=0, help="/healthz port (0: off)")
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=60.0,
        help="reconcile every model this often even without changes",
    )
    p.add_argument("--peering", default=None, help="kopf peering object (several replicas)")
    p.add_argument("--standalone", action="store_true", help="no peering")
    p.add_argument("--priority", type=int, default=None, help="peering priority")
    p.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds after which a silent peer is considered gone",
    )
    p.add_argument(
        "--expert-load-url",
        default=os.environ.get("MMO_EXPERT_LOAD_URL", DEFAULT_LOAD_URL),
        metavar="TEMPLATE",
        help="where live rebalancing reads a model's expert load; placeholders {name}, "
        "{namespace}, {port}, {service} (= {name}-serve-svc) "
        "(env MMO_EXPERT_LOAD_URL; default %(default)s)",
    )
    p.add_argument(
        "--expert-load-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="timeout of one expert-load read",
    )
    p.add_argument(
        "--rebalance-check-seconds",
        type=float,
        default=float(os.environ.get("MMO_REBALANCE_CHECK_SECONDS", "15")),
        metavar="SECONDS",
        help="how often the rebalance timer looks whether a model's "
        "spec.experts.rebalance.intervalSeconds has passed",
    )
    # Tests only: use this interval instead of spec intervalSeconds (the CRD minimum is 30).
    p.add_argument(
        "--rebalance-interval-override", type=float, default=None, help=argparse.SUPPRESS
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_operator)
