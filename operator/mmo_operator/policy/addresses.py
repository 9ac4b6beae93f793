"""Addresses that reach inside the cluster or the node, as admission sees them (pure).

- :class:`ClusterNetworks`: the cluster's pod and Service CIDRs (operator flags
  ``--pod-cidrs`` / ``--service-cidrs``, chart values) and the namespaces where an
  in-cluster federated aggregator may run. The defaults cover the common
  distributions: kubeadm, kind and minikube (pods 10.244.0.0/16 or Calico's
  192.168.0.0/16, Services 10.96.0.0/12), k3s (10.42.0.0/16, 10.43.0.0/16), OpenShift
  (10.128.0.0/14, 172.30.0.0/16), EKS (Services 10.100.0.0/16 or 172.20.0.0/16), AKS
  (Services 10.0.0.0/16), MicroK8s (10.1.0.0/16, 10.152.183.0/24). Set the flags to the
  cluster's real ranges: the defaults also refuse private networks that are not the
  cluster's.
- :data:`INSIDE`: ranges no egress may name in any cluster: loopback, "this network",
  link-local (169.254.169.254 is the cloud metadata service), multicast, NAT64
  (``64:ff9b::/96`` reaches any IPv4 address through the translator, in-cluster ones
  included) and IPv4-mapped IPv6 (``::ffff:0:0/96``, the same IPv4 addresses again).
- :func:`parse_ip`: a host as the resolver reads it, numeric forms included
  (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``, full-width digits).
- :func:`url_credentials`: what in a URL looks like a credential: user information,
  a query parameter named like a key or token, a path segment after such a name, or
  any query value or path segment shaped like a key (``sk-...``, ``AKIA...``, a JWT, a
  long mixed-case-and-digits or hex string). Messages never repeat the value.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_POD_CIDRS = (
    "10.244.0.0/16",
    "192.168.0.0/16",
    "10.42.0.0/16",
    "10.128.0.0/14",
    "10.1.0.0/16",
)
DEFAULT_SERVICE_CIDRS = (
    "10.96.0.0/12",
    "10.43.0.0/16",
    "172.30.0.0/16",
    "10.100.0.0/16",
    "172.20.0.0/16",
    "10.0.0.0/16",
    "10.152.183.0/24",
)
DEFAULT_AGGREGATOR_NAMESPACES = ("federation",)


@dataclass(frozen=True)
class ClusterNetworks:
    """What admission knows of the cluster it guards."""

    pod_cidrs: tuple[str, ...] = DEFAULT_POD_CIDRS
    service_cidrs: tuple[str, ...] = DEFAULT_SERVICE_CIDRS
    aggregator_namespaces: tuple[str, ...] = DEFAULT_AGGREGATOR_NAMESPACES
    _nets: list[tuple[str, Network]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets = [(f"the cluster's pod CIDR {c}", _net(c)) for c in self.pod_cidrs]
        nets += [(f"the cluster's Service CIDR {c}", _net(c)) for c in self.service_cidrs]
        object.__setattr__(self, "_nets", nets)

    def ranges(self) -> list[tuple[str, Network]]:
        """(what it is, network) of the pod and Service CIDRs."""
        return self._nets

    def api_server_ips(self) -> list[Address]:
        """The ``kubernetes.default`` ClusterIP: the first host of each Service CIDR."""
        return [_net(c).network_address + 1 for c in self.service_cidrs]


def _net(cidr: str) -> Network:
    return ipaddress.ip_network(cidr, strict=False)


def parse_cidrs(value: str) -> tuple[str, ...]:
    """A comma-separated CIDR list (flag or chart value), each checked; ValueError names
    the bad one."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=True)))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a CIDR (e.g. 10.96.0.0/12): {exc}") from None
    return tuple(out)


INSIDE: tuple[tuple[str, Network], ...] = tuple(
    (what, _net(cidr))
    for what, cidr in (
        ("loopback", "127.0.0.0/8"),
        ("loopback", "::1/128"),
        ('"this network"', "0.0.0.0/8"),
        ("the unspecified address", "::/128"),
        ("link-local (169.254.169.254 is the cloud metadata service)", "169.254.0.0/16"),
        ("link-local", "fe80::/10"),
        ("multicast", "224.0.0.0/4"),
        ("multicast", "ff00::/8"),
        ("NAT64 (reaches every IPv4 address, in-cluster ones too)", "64:ff9b::/96"),
        ("local-use NAT64", "64:ff9b:1::/48"),
        ("IPv4-mapped IPv6 (the IPv4 addresses again)", "::ffff:0:0/96"),
    )
)
LOOPBACK = tuple(net for what, net in INSIDE if what == "loopback")


def overlapping(net: Network, ranges: list[tuple[str, Network]]) -> list[str]:
    """What of ``ranges`` ``net`` overlaps (same IP version only)."""
    return [what for what, r in ranges if r.version == net.version and net.overlaps(r)]


_INET_PART = re.compile(r"0[xX][0-9A-Fa-f]*|0[0-7]*|[1-9][0-9]*")


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 in the forms inet_aton accepts: 1-4 parts, each decimal, octal (leading 0)
    or hex (0x); the last part fills the remaining bytes (``127.1``, ``2130706433``)."""
    parts = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_PART.fullmatch(p) for p in parts):
        return None
    values = [
        int(p, 16) if p[:2].lower() == "0x" else int(p, 8 if p[0] == "0" else 10) for p in parts
    ]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def parse_ip(host: str) -> Address | None:
    """The address ``host`` names when it is numeric (any form a resolver accepts),
    else None."""
    text = unicodedata.normalize("NFKC", unquote(host)).strip().strip("[]")
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return _inet_aton(text)


def describe(ip: Address, cluster: ClusterNetworks, *, local: bool = False) -> str | None:
    """Why ``ip`` is inside (the node or the cluster), or None. ``local``: loopback is
    allowed (a local trial)."""
    for what, net in (*INSIDE, *cluster.ranges()):
        if ip.version == net.version and ip in net:
            if local and net in LOOPBACK:
                return None
            return what
    return None


# --------------------------------------------------------------------------- credentials

SECRET_NAME = re.compile(r"key|token|secret|password|passwd|signature|sig|auth|credential", re.I)
_KNOWN_TOKEN = re.compile(
    r"(?:sk|pk|rk)[-_][A-Za-z0-9_-]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}"
    r"|hf_[A-Za-z0-9]{20,}|glpat-[A-Za-z0-9_-]{20,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_.-]+"
)
_SECRET_SEGMENT = re.compile(
    r"(?:api[-_]?)?(?:key|token|secret|password)|access[-_]token|apikey", re.I
)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.~+/=]{24,}")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")


def looks_like_token(value: str) -> bool:
    """A key-shaped string: a known key prefix, or 24+ characters mixing upper case,
    lower case and digits, or 32+ hex digits."""
    if _KNOWN_TOKEN.fullmatch(value) or _HEX.fullmatch(value):
        return True
    if not _TOKEN_CHARS.fullmatch(value):
        return False
    kinds = (
        any(c.isupper() for c in value),
        any(c.islower() for c in value),
        any(c.isdigit() for c in value),
    )
    return all(kinds)


def url_credentials(url: str) -> str | None:
    """What in ``url`` looks like a credential (never the value itself), or None."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return "user information (user:password@)"
    for where, query in (("query", parts.query), ("fragment", parts.fragment)):
        for name, value in parse_qsl(query, keep_blank_values=True):
            if SECRET_NAME.search(name):
                return f"a {name!r} {where} parameter"
            if looks_like_token(value):
                return f"a key-shaped value in the {name!r} {where} parameter"
    segments = [unquote(s) for s in parts.path.split("/")]
    for i, seg in enumerate(segments):
        for piece in seg.split(";"):  # matrix parameters: /v1;token=...
            name, sep, value = piece.partition("=")
            if sep and SECRET_NAME.search(name):
                return f"a {name!r} parameter in path segment {i}"
            if looks_like_token(piece) or (sep and looks_like_token(value)):
                return f"a key-shaped path segment (segment {i})"
        nxt = segments[i + 1] if i + 1 < len(segments) else ""
        if _SECRET_SEGMENT.fullmatch(seg) and nxt:
            return f"a value after the path segment {seg!r}"
    return None
