"""Isolation admission rules beyond the CRD's (pure; used by ``mmo validate`` and the webhook).

The CRD's CEL rules (``mmo_operator.api.rules``) already refuse: a hybrid/federated block
in the wrong mode, a non-https hybrid endpoint, ``sensitive`` in offloadDataClasses and
``hf://``/``https://`` sources in private and federated modes. They are not repeated
here (``mmo validate`` prints both lists). What this module adds, and why:

Every mode
    - ``hf://`` and ``https://`` sources are refused in hybrid mode too: pods of every
      mode run with the hub and downloads off (``HF_HUB_OFFLINE=1``...) and hybrid egress
      reaches only the endpoint's CIDRs, so such a source could never load. Stage the
      weights on a PVC (``pvc://``) or an in-cluster object store.
    - ``s3://`` sources: the ``s3.endpoint`` must be inside the cluster -- a Service name
      (``minio``, ``minio.store``, ``minio.store.svc``, ``...svc.cluster.local``) or a
      private IP address (RFC 1918, unique-local IPv6) -- since the network policies
      allow egress only to it (see :mod:`.network`); and it must carry no credentials in
      the URL (user:password@, ``?...key=``): they belong in ``s3.credentialsSecret``.

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
from urllib.parse import parse_qsl, urlsplit

from mmo_operator.api import MultimodalModel, Problem
from mmo_serving.federated import secure

MIN_PREFIX = {4: 16, 6: 32}
MIN_CLIENTS = 3
NOISE_BOUNDS = (0.5, 10.0)
CLIP_BOUNDS = (0.001, 10.0)
_SECRET_QUERY = re.compile(r"key|token|secret|password|passwd|signature|sig|auth", re.I)
_PRIVATE_NETS = [
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "127.0.0.0/8")
]


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
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _inside(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cidrs: list[str]) -> bool:
    nets = [n for n in (_network(c) for c in cidrs) if n is not None]
    return any(ip.version == n.version and ip in n for n in nets)


def _url_credentials(url: str) -> str | None:
    """What in ``url`` looks like a credential, or None."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return "user information (user:password@)"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_QUERY.search(name):
            return f"a {name!r} query parameter"
    return None


def is_in_cluster_host(host: str) -> bool:
    """A Service name (``svc``, ``svc.ns``, ``svc.ns.svc[.cluster.local]``) or a private IP."""
    ip = _ip(host)
    if ip is not None:
        return any(ip.version == n.version and ip in n for n in _PRIVATE_NETS)
    labels = host.lower().rstrip(".").split(".")
    if len(labels) <= 2:  # "minio" or "minio.store": resolved by the cluster's search path
        return all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", lb) for lb in labels)
    return labels[2] == "svc" and (len(labels) == 3 or labels[3:] == ["cluster", "local"])


def _source_problems(model: MultimodalModel) -> list[Problem]:
    spec = model.spec
    source = spec.model.source
    out = []
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
        if not is_in_cluster_host(host):
            out.append(
                Problem(
                    "spec.model.s3.endpoint",
                    f"host {host!r} is outside the cluster; weights must come from an "
                    "in-cluster object store: a Service name (minio, minio.store, "
                    "minio.store.svc.cluster.local) or a private IP address",
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


def check_isolation(model: MultimodalModel) -> list[Problem]:
    """Every isolation problem of ``model`` (empty list: admitted)."""
    return _source_problems(model) + _hybrid_problems(model) + _federated_problems(model)
