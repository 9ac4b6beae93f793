"""RBAC lists exactly what the operator uses: no wildcards, no Secrets, nothing extra."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
APPLY = {"list", "create", "patch", "delete"}  # server-side apply, list, prune

# (apiGroup, resource) -> verbs: what `mmo operator` does (and kopf's own needs).
NAMESPACED = {
    ("serving.mmo.dev", "multimodalmodels"): {"get", "list", "watch", "patch"},
    ("serving.mmo.dev", "multimodalmodels/status"): {"patch"},
    ("serving.mmo.dev", "multimodalmodels/finalizers"): {"update"},
    ("ray.io", "rayservices"): APPLY | {"watch"},
    ("ray.io", "rayclusters"): {"get", "patch"},  # worker bounds KubeRay leaves alone
    ("", "configmaps"): APPLY | {"get"},  # the rebalance timer reads the plan in force
    ("networking.k8s.io", "networkpolicies"): APPLY,
    ("policy", "poddisruptionbudgets"): APPLY,
    ("monitoring.coreos.com", "podmonitors"): APPLY,
    ("apps", "deployments"): APPLY,  # the Flower SuperNode in federated mode
    ("", "events"): {"create"},
}
CLUSTER = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


def grants(role: Obj) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule or rule["resourceNames"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def assert_no_wildcards_or_secrets(role: Obj) -> None:
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key} of {role['metadata']['name']}"
        assert "secrets" not in rule["resources"], "the operator reads no Secrets"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        assert "nonResourceURLs" not in rule


def test_cluster_wide_rbac_is_exact(render: Any) -> None:
    docs = render()
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert_no_wildcards_or_secrets(role)
    assert grants(role) == {**NAMESPACED, **CLUSTER}
    assert [d for d in docs if d["kind"] in ("Role", "RoleBinding")] == []
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "mmo-system"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_namespaced_rbac_is_exact_per_namespace(render: Any, values_namespaced: Obj) -> None:
    docs = render(values_namespaced)
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert grants(cluster_role) == CLUSTER
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-a", "ml-b"]
    for role in roles:
        assert_no_wildcards_or_secrets(role)
        assert grants(role) == NAMESPACED
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-a", "ml-b"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == "mmo-system"


def test_rbac_can_be_left_to_the_user(render: Any) -> None:
    docs = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}})
    assert not [
        d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "ServiceAccount")
    ]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
