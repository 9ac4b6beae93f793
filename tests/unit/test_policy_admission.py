"""Isolation admission: each violation is refused with a message naming its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmo_operator.api.parse import parse_model
from mmo_operator.policy.addresses import ClusterNetworks, parse_cidrs, parse_ip
from mmo_operator.policy.admission import (
    check_isolation,
    dp_epsilon,
    egress_notes,
    is_in_cluster_host,
    split_host_port,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests/samples").glob("*.yaml"))


def sample(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "manifests/samples" / name).read_text())
    return doc


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check_isolation(parse_model(doc))]


def patched(name: str, path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(sample(name))
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return doc


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_pass(path: Path) -> None:
    assert check_isolation(parse_model(yaml.safe_load(path.read_text()))) == []


HY = "hybrid-vqa.yaml"
FED = "federated-vqa.yaml"
PRIV = "private-vqa.yaml"
S3 = {"endpoint": "http://minio.store.svc.cluster.local:9000", "credentialsSecret": "s3-creds"}

# (sample, dotted path to set, value, expected problem path, words the message must hold)
CASES: list[tuple[str, str, Any, str, list[str]]] = [
    (HY, "spec.model.source", "hf://org/model", "spec.model.source", ["hybrid", "pvc://"]),
    (
        HY, "spec.isolation.hybrid.endpoint", "https://user:sk-123@llm.example.com/v1",
        "spec.isolation.hybrid.endpoint", ["user:password@", "credentialsSecret"],
    ),
    (
        HY, "spec.isolation.hybrid.endpoint", "https://llm.example.com/v1?api_key=sk-1",
        "spec.isolation.hybrid.endpoint", ["'api_key' query parameter", "never inline"],
    ),
    (
        HY, "spec.isolation.hybrid.cidrs", ["0.0.0.0/0"],
        "spec.isolation.hybrid.cidrs[0]", ["too wide", "/16"],
    ),
    (
        HY, "spec.isolation.hybrid.cidrs", ["203.0.113.0/24", "2001::/16"],
        "spec.isolation.hybrid.cidrs[1]", ["too wide", "IPv6", "/32"],
    ),
    (
        HY, "spec.isolation.hybrid.cidrs", ["203.0.113.7/24"],
        "spec.isolation.hybrid.cidrs[0]", ["host bits", "203.0.113.0/24"],
    ),
    (
        HY, "spec.isolation.hybrid.endpoint", "https://198.51.100.10/v1",
        "spec.isolation.hybrid.cidrs", ["198.51.100.10", "in none of"],
    ),
    (
        HY, "spec.isolation.hybrid.offloadDataClasses", [],
        "spec.isolation.hybrid.offloadDataClasses", ["empty", "mode private"],
    ),
    (
        HY, "spec.isolation.hybrid.offloadDataClasses", ["public", "public"],
        "spec.isolation.hybrid.offloadDataClasses", ["twice"],
    ),
    (
        FED, "spec.isolation.federated.aggregator", "superlink.federation.svc",
        "spec.isolation.federated.aggregator", ["host:port", "port is required"],
    ),
    (
        FED, "spec.isolation.federated.minClients", 2,
        "spec.isolation.federated.minClients", ["is 2", "at least 3", "recover"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.noiseMultiplier", 0.1,
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier",
        ["is 0.1", "0.5 to 10", "epsilon"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.noiseMultiplier", 0,
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier", ["is 0", "epsilon inf"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.noiseMultiplier", 20,
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier", ["bury"],
    ),
    (
        FED, "spec.isolation.federated.differentialPrivacy.clipNorm", 50,
        "spec.isolation.federated.differentialPrivacy.clipNorm", ["is 50", "0.001 to 10"],
    ),
    (
        FED, "spec.isolation.federated.cidrs", ["10.0.0.0/4"],
        "spec.isolation.federated.cidrs[0]", ["host bits"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,path,value,field,words", CASES, ids=[c[1] + "=" + str(c[2]) for c in CASES]
)
def test_violation_names_field(
    name: str, path: str, value: Any, field: str, words: list[str]
) -> None:
    found = problems(patched(name, path, value))
    assert [p for p, _ in found] == [field], found
    for w in words:
        assert w in found[0][1], (w, found[0][1])


def _with_s3(name: str, endpoint: str) -> dict[str, Any]:
    doc = patched(name, "spec.model.source", "s3://weights/shapes")
    doc["spec"]["model"]["s3"] = {**S3, "endpoint": endpoint}
    doc["spec"]["model"]["architecture"] = {
        "totalParams": 1_000_000, "activeParams": 500_000, "numLayers": 2,
        "numExperts": 8, "expertsPerToken": 2,
    }  # fmt: skip
    return doc


@pytest.mark.parametrize("name", [PRIV, HY, FED])
def test_s3_source_must_be_in_cluster_in_every_mode(name: str) -> None:
    assert problems(_with_s3(name, "http://minio.store.svc.cluster.local:9000")) == []
    assert problems(_with_s3(name, "http://10.96.12.4:9000")) == []  # a Service IP
    found = problems(_with_s3(name, "https://s3.amazonaws.com"))
    assert [p for p, _ in found] == ["spec.model.s3.endpoint"]
    assert "'s3.amazonaws.com' is outside the cluster" in found[0][1]
    found = problems(_with_s3(name, "http://key:secret@minio:9000"))
    assert [p for p, _ in found] == ["spec.model.s3.endpoint"]
    assert "credentialsSecret" in found[0][1]


def test_several_problems_are_all_reported() -> None:
    doc = patched(FED, "spec.isolation.federated.minClients", 1)
    doc["spec"]["isolation"]["federated"]["differentialPrivacy"] = {
        "clipNorm": 0.0001,
        "noiseMultiplier": 0.2,
    }
    assert sorted(p for p, _ in problems(doc)) == [
        "spec.isolation.federated.differentialPrivacy.clipNorm",
        "spec.isolation.federated.differentialPrivacy.noiseMultiplier",
        "spec.isolation.federated.minClients",
    ]


def test_mmo_validate_prints_isolation_problems(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from mmo_operator.cli import main

    bad = tmp_path / "bad.yaml"
    doc = sample("deepseek-v3-int4.yaml")  # pvc:// source: needs no builtin model
    doc["spec"]["isolation"] = sample(FED)["spec"]["isolation"]
    doc["spec"]["isolation"]["federated"]["minClients"] = 2
    bad.write_text(yaml.safe_dump(doc))
    rc = main(["validate", str(bad)])
    out = capsys.readouterr()
    assert rc == 1
    assert "spec.isolation.federated.minClients: is 2; at least 3" in out.out + out.err


def test_dp_epsilon_bound_behind_the_noise_floor() -> None:
    # the documented reason for noiseMultiplier >= 0.5: one round below it costs eps > 10
    assert dp_epsilon(0.49, 1) > 10 > dp_epsilon(0.6, 1)
    assert dp_epsilon(1.1, 20) > dp_epsilon(1.1, 10) > dp_epsilon(2.0, 10)
    assert dp_epsilon(0, 1) == float("inf")


def test_helpers() -> None:
    assert split_host_port("superlink.fl.svc:9092") == ("superlink.fl.svc", 9092)
    assert split_host_port("[2001:db8::1]:9092") == ("2001:db8::1", 9092)
    assert split_host_port("host:0") is None and split_host_port("host") is None
    assert is_in_cluster_host("minio") and not is_in_cluster_host("minio.store")
    assert is_in_cluster_host("minio.store.svc") and is_in_cluster_host("192.168.1.2")
    assert is_in_cluster_host("minio.store.svc.cluster.local")
    assert not is_in_cluster_host("s3.eu-west-1.amazonaws.com")
    assert not is_in_cluster_host("8.8.8.8")


# ------------------------------------------------------------------ egress that reaches inside


def _hybrid(endpoint: str, cidrs: list[str]) -> dict[str, Any]:
    doc = patched(HY, "spec.isolation.hybrid.endpoint", endpoint)
    doc["spec"]["isolation"]["hybrid"]["cidrs"] = cidrs
    return doc


def _federated(aggregator: str, cidrs: list[str]) -> dict[str, Any]:
    doc = patched(FED, "spec.isolation.federated.aggregator", aggregator)
    doc["spec"]["isolation"]["federated"]["cidrs"] = cidrs
    return doc


@pytest.mark.parametrize(
    "cidr,words",
    [
        ("10.96.0.0/16", ["Service CIDR 10.96.0.0/12", "--service-cidrs"]),
        ("10.244.0.0/16", ["pod CIDR 10.244.0.0/16", "--pod-cidrs"]),
        ("169.254.0.0/16", ["link-local", "metadata"]),
        ("127.0.0.0/16", ["loopback"]),
        ("224.0.0.0/16", ["multicast"]),
        ("64:ff9b::/96", ["NAT64"]),
        ("::ffff:0:0/96", ["IPv4-mapped"]),
        ("fe80::/32", ["link-local"]),
    ],
)
def test_hybrid_cidrs_that_reach_inside_are_refused(cidr: str, words: list[str]) -> None:
    found = problems(_hybrid("https://llm.example.com/v1", ["203.0.113.0/24", cidr]))
    assert [p for p, _ in found] == ["spec.isolation.hybrid.cidrs[1]"], found
    for w in [cidr, "reaches inside", *words]:
        assert w in found[0][1], (w, found[0][1])


def test_federated_cidrs_that_reach_inside_are_refused() -> None:
    found = problems(_federated("flower.example.org:9092", ["169.254.0.0/16"]))
    assert [p for p, _ in found] == ["spec.isolation.federated.cidrs[0]"]
    assert "link-local" in found[0][1]


def test_cluster_ranges_come_from_the_operator() -> None:
    doc = _hybrid("https://llm.example.com/v1", ["100.64.0.0/16"])
    assert problems(doc) == []
    cluster = ClusterNetworks(pod_cidrs=("100.64.0.0/10",), service_cidrs=("100.128.0.0/16",))
    found = check_isolation(parse_model(doc), cluster=cluster)
    assert [p.path for p in found] == ["spec.isolation.hybrid.cidrs[0]"]
    assert "pod CIDR 100.64.0.0/10" in found[0].message
    assert parse_cidrs("10.42.0.0/16, fd00::/108") == ("10.42.0.0/16", "fd00::/108")
    with pytest.raises(ValueError, match=r"'10\.42\.0\.1/16' is not a CIDR"):
        parse_cidrs("10.42.0.1/16")


@pytest.mark.parametrize(
    "host,address",
    [
        ("3405803786", "203.0.113.10"),  # decimal
        ("0xcb00710a", "203.0.113.10"),  # hex
        ("0313.0.0161.012", "203.0.113.10"),  # octal parts
        ("203.0.28938", "203.0.113.10"),  # last part fills the rest
        ("２０３.０.１１３.１０", "203.0.113.10"),  # full-width digits
    ],
)
def test_numeric_hosts_are_read_as_addresses(host: str, address: str) -> None:
    assert str(parse_ip(host)) == address
    # inside its CIDRs: admitted; outside: the address is named
    assert problems(_hybrid(f"https://{host}/v1", ["203.0.113.0/24"])) == []
    found = problems(_hybrid(f"https://{host}/v1", ["198.51.100.0/24"]))
    assert [p for p, _ in found] == ["spec.isolation.hybrid.cidrs"]
    assert f"address {address} is in none of" in found[0][1]


@pytest.mark.parametrize(
    "host,words",
    [
        ("2130706433", ["127.0.0.1", "loopback"]),
        ("0x7f.1", ["127.0.0.1", "loopback"]),
        ("localhost", ["loopback"]),
        ("169.254.169.254", ["metadata"]),
        ("[::ffff:10.96.0.1]", ["IPv4-mapped"]),
        ("[64:ff9b::a60:1]", ["NAT64"]),
        ("10.96.0.1", ["Service CIDR 10.96.0.0/12"]),
    ],
)
def test_endpoint_hosts_inside_are_refused(host: str, words: list[str]) -> None:
    found = problems(_hybrid(f"https://{host}/v1", ["203.0.113.0/24"]))
    msgs = [m for p, m in found if p == "spec.isolation.hybrid.endpoint"]
    assert len(msgs) == 1, found
    for w in [*words, "never a peer"]:
        assert w in msgs[0], (w, msgs[0])


def test_a_local_trial_accepts_loopback_with_a_note() -> None:
    doc = _hybrid("https://127.0.0.1:8443/v1", ["127.0.0.1/32"])
    model = parse_model(doc)
    assert {p.path for p in check_isolation(model)} == {
        "spec.isolation.hybrid.endpoint",
        "spec.isolation.hybrid.cidrs[0]",
    }
    assert check_isolation(model, local=True) == []
    assert egress_notes(model, local=True) == [
        "hybrid endpoint 127.0.0.1 is loopback: accepted for a local trial (mmo up); the "
        "operator and its webhook refuse it"
    ]
    # only loopback: the metadata service stays refused in a local trial too
    meta = parse_model(_hybrid("https://169.254.169.254/v1", ["169.254.169.254/32"]))
    assert len(check_isolation(meta, local=True)) == 2


def test_a_dns_endpoint_gets_a_note_for_policy_enforced() -> None:
    notes = egress_notes(parse_model(sample(HY)))
    assert notes == [
        "hybrid endpoint llm.example.com is a DNS name: admission cannot check that its "
        "addresses lie in 203.0.113.0/24; egress reaches only those CIDRs, so calls to any "
        "other address fail"
    ]
    assert egress_notes(parse_model(_hybrid("https://203.0.113.9/v1", ["203.0.113.0/24"]))) == []
    # an in-cluster aggregator is a Service: nothing to resolve outside
    assert egress_notes(parse_model(sample(FED))) == []
    fed = parse_model(_federated("flower.example.org:9092", ["198.51.100.0/24"]))
    assert egress_notes(fed)[0].startswith("federated aggregator flower.example.org is a DNS")


def test_in_cluster_aggregators_only_in_listed_namespaces() -> None:
    found = problems(_federated("x.kube-system.svc:443", ["10.96.40.0/24"]))
    assert [p for p, _ in found] == [
        "spec.isolation.federated.aggregator",
        "spec.isolation.federated.cidrs[0]",  # not in an allowed namespace: cluster ranges out
    ]
    assert "namespace 'kube-system', which may not host an aggregator" in found[0][1]
    assert "allowed: ['federation']" in found[0][1]
    assert "admission.aggregatorNamespaces" in found[0][1]
    doc = _federated("x.kube-system.svc.cluster.local:9092", ["10.96.40.0/24"])
    cluster = ClusterNetworks(aggregator_namespaces=("kube-system",))
    assert check_isolation(parse_model(doc), cluster=cluster) == []
    # an allowed namespace may name cluster ranges, but never the API server's ClusterIP
    found = problems(_federated("flower-superlink.federation.svc:9092", ["10.96.0.0/24"]))
    assert [p for p, _ in found] == ["spec.isolation.federated.cidrs[0]"]
    assert "the API server's ClusterIP 10.96.0.1" in found[0][1]


@pytest.mark.parametrize("aggregator", ["superlink:9092", "superlink.kube-system:9092"])
def test_aggregators_the_search_path_could_resolve_either_way_are_refused(
    aggregator: str,
) -> None:
    found = problems(_federated(aggregator, ["198.51.100.0/24"]))
    assert [p for p, _ in found] == ["spec.isolation.federated.aggregator"]
    assert "ambiguous" in found[0][1] and "NAME.NAMESPACE.svc" in found[0][1]


@pytest.mark.parametrize(
    "url,words",
    [
        ("https://llm.example.com/v1?api_key=sk-1", ["'api_key' query parameter"]),
        ("https://llm.example.com/v1?q=sk-abcdef123456", ["key-shaped value", "'q'"]),
        ("https://llm.example.com/v1/sk-proj-abcdef1234567890", ["key-shaped path segment"]),
        ("https://llm.example.com/key/abc/v1", ["after the path segment 'key'"]),
        ("https://llm.example.com/v1;token=abc", ["'token' parameter in path segment 1"]),
        ("https://llm.example.com/v1/token=abc", ["'token' parameter in path segment 2"]),
        ("https://llm.example.com/AKIAIOSFODNN7EXAMPLE/v1", ["key-shaped path segment"]),
        ("https://llm.example.com/v1/Zx8kQ2mN7pR4tY6uW1vB3cD5", ["key-shaped path segment"]),
        ("https://llm.example.com/v1#access_token=abc", ["'access_token' fragment"]),
    ],
)
def test_credentials_anywhere_in_the_endpoint_url_are_refused(url: str, words: list[str]) -> None:
    found = problems(_hybrid(url, ["203.0.113.0/24"]))
    assert [p for p, _ in found] == ["spec.isolation.hybrid.endpoint"], found
    for w in [*words, "credentialsSecret"]:
        assert w in found[0][1], (w, found[0][1])
    for secret in ("sk-abcdef", "AKIAIOSFODNN7EXAMPLE", "Zx8kQ2mN7pR4tY6uW1vB3cD5"):
        assert secret not in found[0][1]  # the message never repeats the value


@pytest.mark.parametrize(
    "url",
    [
        "https://llm.example.com/v1",
        "https://llm.example.com/openai/deployments/gpt-4o-mini-2024-07-18/v1?api-version=2024-06-01",
        "https://llm.example.com/v1?model=qwen2.5-72b-instruct",
    ],
)
def test_ordinary_endpoint_urls_pass(url: str) -> None:
    assert problems(_hybrid(url, ["203.0.113.0/24"])) == []


@pytest.mark.parametrize(
    "endpoint,words",
    [
        ("http://minio.store:9000", ["'minio.store' is outside the cluster"]),
        ("http://10.20.0.4:9000", ["'10.20.0.4' is outside", "--pod-cidrs"]),
        ("http://127.0.0.1:9000", ["'127.0.0.1' is outside"]),
        ("http://169.254.169.254/", ["'169.254.169.254' is outside"]),
        ("http://2130706433:9000", ["'2130706433' is outside"]),
        ("http://minio.store.svc.evil.com:9000", ["is outside"]),
    ],
)
def test_s3_endpoint_must_be_an_in_cluster_address(endpoint: str, words: list[str]) -> None:
    found = problems(_with_s3(PRIV, endpoint))
    assert [p for p, _ in found] == ["spec.model.s3.endpoint"], found
    for w in words:
        assert w in found[0][1], (w, found[0][1])
    assert problems(_with_s3(PRIV, "http://minio:9000")) == []  # the model's namespace
    assert problems(_with_s3(PRIV, "http://10.244.3.7:9000")) == []  # a pod IP


def test_mmo_up_accepts_a_loopback_endpoint_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmo_operator.cli import main
    from mmo_operator.cli.up import up_app_args

    doc = _hybrid("https://127.0.0.1:8443/v1", ["127.0.0.1/32"])
    doc["spec"]["model"] = sample("deepseek-v3-int4.yaml")["spec"]["model"]  # pvc://
    doc["spec"]["resources"] = sample("deepseek-v3-int4.yaml")["spec"]["resources"]
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(doc))
    args = up_app_args(str(path))
    assert args.isolation.hybrid is not None
    assert "warning: hybrid endpoint 127.0.0.1 is loopback" in capsys.readouterr().err
    assert main(["validate", str(path)]) == 1  # the operator's check refuses it
    assert "127.0.0.1, loopback: never a peer" in capsys.readouterr().err


def test_local_checkpoint_source_only_for_mmo_up() -> None:
    model = parse_model(patched("deepseek-v3-int4.yaml", "spec.model.source", "file:///ckpt/ds"))
    ((path, message),) = [(p.path, p.message) for p in check_isolation(model)]
    assert path == "spec.model.source"
    assert "file:// names a directory on one machine" in message
    assert "`mmo up`" in message and "pvc://CLAIM/PATH" in message
    assert check_isolation(model, local=True) == []


def test_local_checkpoint_source_must_be_absolute() -> None:
    from mmo_operator.api.problems import InvalidResource
    from mmo_operator.validation import validate

    doc = patched("deepseek-v3-int4.yaml", "spec.model.source", "file://ckpt/ds")
    with pytest.raises(InvalidResource) as err:
        validate(doc, local=True)
    (problem,) = err.value.problems
    assert problem.path == "spec.model.source"
    assert "file:///ABSOLUTE/DIR (mmo up only)" in problem.message
