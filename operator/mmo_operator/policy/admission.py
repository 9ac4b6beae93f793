"""Isolation admission rules beyond the CRD's (pure; used by ``mmo validate`` and the webhook).

The CRD's CEL rules (``mmo_operator.api.rules``) already refuse: a hybrid/federated block
in the wrong mode, a non-https hybrid endpoint, ``sensitive`` in offloadDataClasses and
``hf://``/``https://`` sources in private and federated modes. They are not repeated
here (``mmo validate`` prints both lists). What this module adds, and why:

Every mode
    - ``file://`` sources (a checkpoint directory on this machine) serve only with
      ``mmo up`` (``local=True``); in a cluster no pod has that directory.
    - ``hf://`` and ``https://`` sources are refused in hybrid mode too: pods of every
      mode run with the hub and downloads off (``HF_HUB_OFFLINE=1``...) and hybrid egress
      reaches only the endpoint's CIDRs, so such a source could never load. Stage the
      weights on a PVC (``pvc://``) or an in-cluster object store.
    - ``s3://`` sources: the ``s3.endpoint`` must be inside the cluster -- a Service of
      the model's namespace (``minio``), a qualified Service name (``minio.store.svc``,
      ``...svc.cluster.local``) or an address in the cluster's pod or Service CIDRs;
      ``minio.store`` is refused: the DNS search path makes it a Service only if
      namespace ``store`` exists, an outside host otherwise -- and it must carry no
      credentials in the URL: they belong in ``s3.credentialsSecret``.
    - Egress never reaches inside (:mod:`.addresses`): hybrid and federated ``cidrs``
      must not overlap loopback, "this network", link-local (the cloud metadata
      service), multicast, NAT64 ``64:ff9b::/96``, IPv4-mapped ``::ffff:0:0/96`` or the
      cluster's pod and Service CIDRs (``ClusterNetworks``: operator flags, defaults of
      the common distributions); an endpoint or aggregator host that is such an address
      is refused, numeric forms included (``2130706433``, ``0x7f.1``, ``localhost``).
      ``check_isolation(..., local=True)`` (``mmo up``) allows loopback, and
      :func:`egress_notes` says so; it also says when a peer is a DNS name, whose
      addresses admission cannot compare with its CIDRs (for ``PolicyEnforced``).
    - Credentials anywhere in a URL: user information, a query or fragment parameter
      named like a key or token, a path segment after ``key``/``token``, a matrix
      parameter (``;token=``), or any value shaped like a key (``sk-...``, ``AKIA...``,
      a JWT, a long mixed-case-and-digits or hex string). Messages never repeat it.

private
    Nothing may name a place outside the cluster. Beyond the CRD's rules this means the
    ``s3`` endpoint rule above. (The API has no ``runtime_env`` field and the operator
    never writes one into serveConfigV2, so a remote ``runtime_env`` cannot be asked for:
    the builders' tests hold that line.)

hybrid
    - The endpoint URL must not embed credentials (``https://user:key@host``, ``?api_key=``,
      ``?token=``...): the key comes only from ``credentialsSecret``.
    - ``cidrs`` are the only egress, so they must be real networks (no host bits set),
      not the whole internet: IPv4 prefixes of at least /16, IPv6 of at least /32.
      ``0.0.0.0/0`` would make the egress policy allow everything.
    - An endpoint given as an IP address must lie inside ``cidrs``.
    - ``offloadDataClasses`` must not be empty (hybrid without offload is private mode).

federated
    - ``aggregator`` is ``host:port`` (a port is required: the egress policy opens only
      that port); an IP address host must lie inside ``cidrs``; ``cidrs`` as in hybrid.
      An in-cluster aggregator (``NAME.NS.svc``) only in a namespace the operator lists
      (``ClusterNetworks.aggregator_namespaces``); its ``cidrs`` may then name the
      cluster's ranges, but not the API server's ClusterIP. ``NAME`` and ``NAME.NS``
      alone are refused as ambiguous (the search path decides where they go).
    - ``minClients`` >= 3: with two sites, each one can subtract its own update from the
      aggregate and recover the other's exactly, secure aggregation or not.
    - ``differentialPrivacy.noiseMultiplier`` in [0.5, 10]: below 0.5 a *single* round of
      the Gaussian mechanism already costs epsilon > 10 at delta = 1e-5 (Renyi-DP bound,
      :func:`dp_epsilon`), i.e. no meaningful privacy; above 10 the noise on the mean of
      ``minClients`` updates buries the signal and the rounds are wasted.
    - ``differentialPrivacy.clipNorm`` in [0.001, 10]: the updates are those of a small
      adapter or answer head, whose L2 norms are well below 10; a larger bound clips
      nothing (the noise, clipNorm x noiseMultiplier, grows with it for no gain) and a
      bound under 0.001 shrinks every update to nothing.
    - ``secureAggregation: true`` (Flower SecAgg+): the protocol's parameters are derived
      from ``minClients`` and ``differentialPrivacy``
      (:func:`mmo_serving.federated.secure.derive`) and refused when they would make it
      insecure or impossible (:func:`mmo_serving.federated.secure.problems`): fewer than
      4 sites per round, a reconstruction threshold a colluding pair could meet or not
      above half the shares, more shares than sites, a sum that could overflow.
"""

from __future__ import annotations

import ipaddress
import math
import re
from urllib.parse import urlsplit

from mmo_operator.api import MultimodalModel, Problem
from mmo_operator.api.v1alpha1 import LOCAL_SOURCE
from mmo_operator.policy.addresses import (
    INSIDE,
    LOOPBACK,
    ClusterNetworks,
    describe,
    overlapping,
    parse_ip,
    url_credentials,
)
from mmo_serving.federated import secure

MIN_PREFIX = {4: 16, 6: 32}
MIN_CLIENTS = 3
NOISE_BOUNDS = (0.5, 10.0)
CLIP_BOUNDS = (0.001, 10.0)


def dp_epsilon(noise_multiplier: float, rounds: int, delta: float = 1e-5) -> float:
    """Epsilon of ``rounds`` Gaussian-mechanism releases (no subsampling amplification).

    Renyi DP of order a is ``rounds * a / (2 z^2)``; converted with
    ``eps = rdp + log(1/delta) / (a - 1)``, minimised over a > 1 (closed form).
    """
    if noise_multiplier <= 0:
        return math.inf
    c = rounds / (2 * noise_multiplier**2)
    log_d = math.log(1 / delta)
    # eps(a) = c*a + log_d/(a-1): minimum at a = 1 + sqrt(log_d / c)
    a = 1 + math.sqrt(log_d / c)
    return c * a + log_d / (a - 1)


def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None


def _cidr_problems(path: str, cidrs: list[str]) -> list[Problem]:
    out = []
    for i, cidr in enumerate(cidrs):
        where = f"{path}[{i}]"
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            loose = _network(cidr)
            if loose is None:
                out.append(Problem(where, f"{cidr!r} is not a CIDR (e.g. 203.0.113.0/24)"))
            else:
                out.append(Problem(where, f"{cidr} has host bits set; the network is {loose}"))
            continue
        least = MIN_PREFIX[net.version]
        if net.prefixlen < least:
            out.append(
                Problem(
                    where,
                    f"{cidr} is too wide for an egress allow-list (prefix /{net.prefixlen}); "
                    f"list the endpoint's own networks, IPv{net.version} prefixes of at least "
                    f"/{least}",
                )
            )
    return out


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return parse_ip(host)  # numeric forms too: 2130706433, 0x7f000001, 127.1


def _inside(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cidrs: list[str]) -> bool:
    nets = [n for n in (_network(c) for c in cidrs) if n is not None]
    return any(ip.version == n.version and ip in n for n in nets)


def _url_credentials(url: str) -> str | None:
    """What in ``url`` looks like a credential, or None."""
    return url_credentials(url)


_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def service_namespace(host: str) -> str | None:
    """The namespace of an in-cluster Service name (``NAME.NS.svc``,
    ``NAME.NS.svc.cluster.local``), else None."""
    labels = host.lower().rstrip(".").split(".")
    if len(labels) >= 3 and labels[2] == "svc" and labels[3:] in ([], ["cluster", "local"]):
        return labels[1] if all(_LABEL.fullmatch(lb) for lb in labels) else None
    return None


def is_in_cluster_host(host: str, cluster: ClusterNetworks | None = None) -> bool:
    """A Service of the model's namespace (``minio``), a qualified Service name
    (``minio.store.svc``, ``minio.store.svc.cluster.local``) or an address in the
    cluster's pod or Service CIDRs. ``minio.store`` is not: the search path makes it a
    Service only if namespace ``store`` exists, and an outside host ``minio.store``
    otherwise."""
    cluster = cluster or ClusterNetworks()
    ip = _ip(host)
    if ip is not None:
        what = describe(ip, cluster)
        return what is not None and what.startswith("the cluster's")
    labels = host.lower().rstrip(".").split(".")
    if len(labels) == 1:
        return bool(_LABEL.fullmatch(labels[0]))
    return service_namespace(host) is not None


def _source_problems(
    model: MultimodalModel, cluster: ClusterNetworks | None = None, local: bool = False
) -> list[Problem]:
    spec = model.spec
    source = spec.model.source
    out = []
    if source.startswith(LOCAL_SOURCE) and not local:
        out.append(
            Problem(
                "spec.model.source",
                f"{LOCAL_SOURCE} names a directory on one machine and serves only with "
                "`mmo up` there; in a cluster use pvc://CLAIM/PATH (the checkpoint on a "
                "PersistentVolumeClaim) or an in-cluster s3://",
            )
        )
    if spec.isolation.mode == "hybrid" and source.startswith(("hf://", "https://")):
        out.append(
            Problem(
                "spec.model.source",
                "hf:// and https:// sources cannot load in hybrid mode either: pods run with "
                "the hub and downloads off and egress only to the endpoint's CIDRs; use "
                "pvc://CLAIM/PATH, builtin:// or an in-cluster s3://",
            )
        )
    s3 = spec.model.s3
    if s3 is not None:
        cred = _url_credentials(s3.endpoint)
        if cred:
            out.append(
                Problem(
                    "spec.model.s3.endpoint",
                    f"the URL carries {cred}; credentials belong in s3.credentialsSecret",
                )
            )
        host = urlsplit(s3.endpoint).hostname or ""
        if not is_in_cluster_host(host, cluster):
            out.append(
                Problem(
                    "spec.model.s3.endpoint",
                    f"host {host!r} is outside the cluster; weights must come from an "
                    "in-cluster object store: a Service name (minio in the model's "
                    "namespace, minio.store.svc, minio.store.svc.cluster.local) or an "
                    "address in the cluster's pod or Service CIDRs (operator flags "
                    "--pod-cidrs, --service-cidrs)",
                )
            )
    return out


def _hybrid_problems(model: MultimodalModel) -> list[Problem]:
    hy = model.spec.isolation.hybrid
    if hy is None:
        return []
    base = "spec.isolation.hybrid"
    out = []
    cred = _url_credentials(hy.endpoint)
    if cred:
        out.append(
            Problem(
                f"{base}.endpoint",
                f"the URL carries {cred}; the API key comes only from credentialsSecret "
                "(never inline)",
            )
        )
    parts = urlsplit(hy.endpoint)
    if parts.scheme == "https" and not parts.hostname:
        out.append(Problem(f"{base}.endpoint", "has no host (expected https://HOST/PATH)"))
    out += _cidr_problems(f"{base}.cidrs", hy.cidrs)
    ip = _ip(parts.hostname or "")
    if ip is not None and not _inside(ip, hy.cidrs):
        out.append(
            Problem(
                f"{base}.cidrs",
                f"the endpoint's address {ip} is in none of {hy.cidrs}: egress to it would "
                "be blocked",
            )
        )
    if not hy.offload_data_classes:
        out.append(
            Problem(
                f"{base}.offloadDataClasses",
                "is empty: nothing could be offloaded; list public and/or internal, or use "
                "mode private",
            )
        )
    elif len(set(hy.offload_data_classes)) != len(hy.offload_data_classes):
        out.append(Problem(f"{base}.offloadDataClasses", "lists a class twice"))
    return out


def split_host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None when malformed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:/\s\[\]]+):(\d{1,5})", address)
    if m is None:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def _federated_problems(model: MultimodalModel) -> list[Problem]:
    fed = model.spec.isolation.federated
    if fed is None:
        return []
    base = "spec.isolation.federated"
    out = []
    hp = split_host_port(fed.aggregator)
    if hp is None:
        out.append(
            Problem(
                f"{base}.aggregator",
                f"{fed.aggregator!r} is not host:port (e.g. superlink.fl.svc:9092 or "
                "[2001:db8::1]:9092); the port is required, 1-65535",
            )
        )
    out += _cidr_problems(f"{base}.cidrs", fed.cidrs)
    if hp is not None:
        ip = _ip(hp[0])
        if ip is not None and not _inside(ip, fed.cidrs):
            out.append(
                Problem(
                    f"{base}.cidrs",
                    f"the aggregator's address {ip} is in none of {fed.cidrs}: egress to it "
                    "would be blocked",
                )
            )
    if fed.min_clients < MIN_CLIENTS:
        out.append(
            Problem(
                f"{base}.minClients",
                f"is {fed.min_clients}; at least {MIN_CLIENTS} sites per round are required: "
                "with two, each site can subtract its own update from the aggregate and "
                "recover the other's",
            )
        )
    dp = fed.differential_privacy
    lo, hi = NOISE_BOUNDS
    if not lo <= dp.noise_multiplier <= hi:
        why = (
            f"one round alone costs epsilon {dp_epsilon(dp.noise_multiplier, 1):.3g} "
            "(delta 1e-5): no meaningful privacy"
            if dp.noise_multiplier < lo
            else "the noise would bury the averaged update"
        )
        out.append(
            Problem(
                f"{base}.differentialPrivacy.noiseMultiplier",
                f"is {dp.noise_multiplier}; allowed {lo} to {hi}: {why}",
            )
        )
    if fed.secure_aggregation:
        params = secure.derive(fed.min_clients, dp.clip_norm, dp.noise_multiplier)
        out += [
            Problem(f"{base}.secureAggregation", f"with minClients {fed.min_clients}: {why}")
            for why in secure.problems(params)
        ]
    lo, hi = CLIP_BOUNDS
    if not lo <= dp.clip_norm <= hi:
        out.append(
            Problem(
                f"{base}.differentialPrivacy.clipNorm",
                f"is {dp.clip_norm}; allowed {lo} to {hi}: adapter/head updates have L2 "
                "norms below 10, so a larger bound clips nothing and only scales the noise, "
                "and a smaller one erases the updates",
            )
        )
    return out


def _range_problems(
    path: str,
    cidrs: list[str],
    cluster: ClusterNetworks,
    *,
    local: bool,
    in_cluster: bool,
) -> list[Problem]:
    """CIDRs that reach inside the node or the cluster. ``in_cluster``: the peer is a
    Service of an allowed namespace, so the cluster's ranges may be named, but never
    the API server's ClusterIP."""
    inside = [(w, n) for w, n in INSIDE if not (local and n in LOOPBACK)]
    out = []
    for i, cidr in enumerate(cidrs):
        net = _network(cidr)
        if net is None or _cidr_problems(path, [cidr]):
            continue  # not a CIDR, host bits, too wide: reported by _cidr_problems
        whats = overlapping(net, inside)
        if in_cluster:
            api = [ip for ip in cluster.api_server_ips() if ip.version == net.version]
            whats += [f"the API server's ClusterIP {ip}" for ip in api if ip in net]
        else:
            whats += overlapping(net, cluster.ranges())
        if whats:
            out.append(
                Problem(
                    f"{path}[{i}]",
                    f"{cidr} overlaps {'; '.join(dict.fromkeys(whats))}: egress there reaches "
                    "inside the node or the cluster; list only the peer's own networks "
                    "(the cluster's ranges come from the operator flags --pod-cidrs and "
                    "--service-cidrs)",
                )
            )
    return out


def _address_problem(
    path: str, host: str, cluster: ClusterNetworks, *, local: bool, what_host: str
) -> Problem | None:
    """A numeric or loopback host that reaches inside."""
    ip = _ip(host)
    if ip is not None:
        why = describe(ip, cluster, local=local)
        if why is not None:
            return Problem(path, f"the {what_host} {host!r} is {ip}, {why}: never a peer")
        return None
    name = host.lower().rstrip(".")
    if not local and (name == "localhost" or name.endswith(".localhost")):
        return Problem(path, f"the {what_host} {host!r} is loopback: never a peer")
    return None


def _egress_problems(
    model: MultimodalModel, cluster: ClusterNetworks, local: bool
) -> list[Problem]:
    iso = model.spec.isolation
    out: list[Problem] = []
    if iso.hybrid is not None:
        base = "spec.isolation.hybrid"
        host = urlsplit(iso.hybrid.endpoint).hostname or ""
        problem = _address_problem(
            f"{base}.endpoint", host, cluster, local=local, what_host="endpoint host"
        )
        out += [problem] if problem else []
        out += _range_problems(
            f"{base}.cidrs", iso.hybrid.cidrs, cluster, local=local, in_cluster=False
        )
    fed = iso.federated
    if fed is not None:
        base = "spec.isolation.federated"
        hp = split_host_port(fed.aggregator)
        host = hp[0] if hp else fed.aggregator.rsplit(":", 1)[0]
        namespace = service_namespace(host)
        labels = host.rstrip(".").split(".")
        allowed = list(cluster.aggregator_namespaces)
        if namespace is not None and namespace not in allowed:
            out.append(
                Problem(
                    f"{base}.aggregator",
                    f"{host!r} is a Service in namespace {namespace!r}, which may not host "
                    f"an aggregator; allowed: {allowed or 'none'} (chart value "
                    "admission.aggregatorNamespaces)",
                )
            )
        elif hp and namespace is None and _ip(host) is None and len(labels) <= 2:
            out.append(
                Problem(
                    f"{base}.aggregator",
                    f"{host!r} is ambiguous: the cluster's DNS search path makes it a "
                    "Service of whichever namespace matches, or an outside host; write "
                    "NAME.NAMESPACE.svc for an in-cluster aggregator, or the outside "
                    "host's full name",
                )
            )
        elif hp:
            problem = _address_problem(
                f"{base}.aggregator", host, cluster, local=local, what_host="aggregator host"
            )
            out += [problem] if problem else []
        out += _range_problems(
            f"{base}.cidrs",
            fed.cidrs,
            cluster,
            local=local,
            in_cluster=namespace is not None and namespace in allowed,
        )
    return out


def egress_notes(
    model: MultimodalModel, cluster: ClusterNetworks | None = None, *, local: bool = False
) -> list[str]:
    """What admission could not check, for ``PolicyEnforced`` (and ``mmo up``'s
    warnings): a DNS name's addresses against its CIDRs; with ``local``, a loopback
    peer accepted for a local trial."""
    cluster = cluster or ClusterNetworks()
    iso = model.spec.isolation
    peers: list[tuple[str, str, list[str]]] = []
    if iso.hybrid is not None:
        peers.append(
            ("hybrid endpoint", urlsplit(iso.hybrid.endpoint).hostname or "", iso.hybrid.cidrs)
        )
    if iso.federated is not None:
        hp = split_host_port(iso.federated.aggregator)
        if hp and service_namespace(hp[0]) is None:
            peers.append(("federated aggregator", hp[0], iso.federated.cidrs))
    out = []
    for what, host, cidrs in peers:
        ip = _ip(host)
        name = host.lower().rstrip(".")
        loopback = name == "localhost" or name.endswith(".localhost")
        if local and (
            loopback
            or (ip is not None and any(ip in n for n in LOOPBACK if n.version == ip.version))
        ):
            out.append(
                f"{what} {host} is loopback: accepted for a local trial (mmo up); the "
                "operator and its webhook refuse it"
            )
        elif ip is None and host:
            out.append(
                f"{what} {host} is a DNS name: admission cannot check that its addresses "
                f"lie in {', '.join(cidrs)}; egress reaches only those CIDRs, so calls to "
                "any other address fail"
            )
    return out


def check_isolation(
    model: MultimodalModel, *, cluster: ClusterNetworks | None = None, local: bool = False
) -> list[Problem]:
    """Every isolation problem of ``model`` (empty list: admitted). ``cluster``: the
    cluster's pod and Service CIDRs and the aggregator namespaces (defaults: the common
    distributions'). ``local``: a local trial (``mmo up``), where a loopback peer is
    allowed (:func:`egress_notes` says so)."""
    cluster = cluster or ClusterNetworks()
    return (
        _source_problems(model, cluster, local)
        + _hybrid_problems(model)
        + _federated_problems(model)
        + _egress_problems(model, cluster, local)
    )
