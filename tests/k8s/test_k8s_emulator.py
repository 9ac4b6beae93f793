"""Tests of the strict emulator's extensions to KMock (each would fail on plain KMock 0.8)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from kube_emulator import (
    EmulatorThread,
    field_paths,
    fields_v1_to_paths,
    parse_label_selector,
    paths_to_fields_v1,
)

MMM = "/apis/serving.mmo.dev/v1alpha1/namespaces/ns/multimodalmodels"
CM = "/api/v1/namespaces/ns/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSONP = {"Content-Type": "application/json-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}


@pytest.fixture()
def api(emu: EmulatorThread) -> httpx.Client:
    emu.call(
        emu.emulator.register,
        "serving.mmo.dev/v1alpha1/multimodalmodels",
        "MultimodalModel",
        status=True,
    )
    with httpx.Client(base_url=emu.url, timeout=10) as client:
        yield client


def mmm(name: str = "a", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.mmo.dev/v1alpha1",
        "kind": "MultimodalModel",
        "metadata": {"name": name, "labels": {"team": "x"}},
        "spec": spec or {"gpus": 8},
        "status": {"ignored": True},
    }


def cm(name: str, owner: dict[str, Any] | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def test_create_assigns_server_metadata_and_refuses_duplicates(api: httpx.Client) -> None:
    r = api.post(MMM, json=mmm())
    assert r.status_code == 201
    meta = r.json()["metadata"]
    assert meta["uid"] and meta["resourceVersion"] == "1" and meta["generation"] == 1
    assert meta["namespace"] == "ns" and meta["creationTimestamp"]
    assert "status" not in r.json(), "status is set through the status subresource only"
    dup = api.post(MMM, json=mmm())
    assert dup.status_code == 409 and dup.json()["reason"] == "AlreadyExists"


def test_generation_and_status_subresource_isolation(api: httpx.Client) -> None:
    api.post(MMM, json=mmm())
    r = api.patch(f"{MMM}/a", json={"spec": {"gpus": 16}, "status": {"x": 1}}, headers=MERGE)
    body = r.json()
    assert body["metadata"]["generation"] == 2 and body["metadata"]["resourceVersion"] == "2"
    assert "status" not in body, "the main resource ignores status"
    r = api.patch(
        f"{MMM}/a/status", json={"status": {"ready": True}, "spec": {"gpus": 1}}, headers=MERGE
    )
    body = r.json()
    assert body["status"] == {"ready": True}
    assert body["spec"] == {"gpus": 16}, "the status subresource ignores spec"
    assert body["metadata"]["generation"] == 2, "status changes do not move generation"
    labels = api.patch(f"{MMM}/a", json={"metadata": {"labels": {"y": "1"}}}, headers=MERGE)
    assert labels.json()["metadata"]["generation"] == 2, "metadata changes do not either"


def test_noop_patch_writes_nothing(emu: EmulatorThread, api: httpx.Client) -> None:
    api.post(MMM, json=mmm())
    before = len(emu.emulator.events)
    r = api.patch(f"{MMM}/a", json={"spec": {"gpus": 8}}, headers=MERGE)
    assert r.json()["metadata"]["resourceVersion"] == "1"
    assert len(emu.emulator.events) == before


def test_stale_resource_version_conflicts(api: httpx.Client) -> None:
    api.post(MMM, json=mmm())
    api.patch(f"{MMM}/a", json={"spec": {"gpus": 16}}, headers=MERGE)
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"gpus": 4}}
    r = api.patch(f"{MMM}/a", json=stale, headers=MERGE)
    assert r.status_code == 409 and "has been modified" in r.json()["message"]
    assert api.get(f"{MMM}/a").json()["spec"] == {"gpus": 16}


def test_json_patch_test_op_fails_with_422_like_kopf_expects(api: httpx.Client) -> None:
    api.post(MMM, json=mmm())
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "999"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    assert api.patch(f"{MMM}/a", json=ops, headers=JSONP).status_code == 422
    ops[0]["value"] = "1"
    r = api.patch(f"{MMM}/a", json=ops, headers=JSONP)
    assert r.status_code == 200 and r.json()["metadata"]["finalizers"] == ["x"]


def test_server_side_apply_owns_and_removes_fields(api: httpx.Client) -> None:
    url = f"{CM}/c?fieldManager=op&force=true"
    r = api.patch(url, content=json.dumps(cm("c", a="1", b="2")), headers=APPLY)
    assert r.status_code == 200 and r.json()["data"] == {"a": "1", "b": "2"}
    rv = r.json()["metadata"]["resourceVersion"]
    again = api.patch(url, content=json.dumps(cm("c", a="1", b="2")), headers=APPLY)
    assert again.json()["metadata"]["resourceVersion"] == rv, "a no-op apply writes nothing"
    # someone else adds a field with a merge patch: it survives our applies
    api.patch(f"{CM}/c", json={"data": {"theirs": "x"}}, headers=MERGE)
    r = api.patch(url, content=json.dumps(cm("c", a="2")), headers=APPLY)
    assert r.json()["data"] == {"a": "2", "theirs": "x"}, "b was ours and is removed"
    fields = r.json()["metadata"]["managedFields"]
    assert fields[0]["manager"] == "op" and fields[0]["operation"] == "Apply"
    assert fields_v1_to_paths(fields[0]["fieldsV1"]) >= {("data", "a")}


def test_server_side_apply_conflicts_without_force(api: httpx.Client) -> None:
    api.patch(f"{CM}/c?fieldManager=one", content=json.dumps(cm("c", a="1")), headers=APPLY)
    r = api.patch(f"{CM}/c?fieldManager=two", content=json.dumps(cm("c", a="2")), headers=APPLY)
    assert r.status_code == 409
    assert r.json()["details"]["causes"][0]["field"] == ".data.a"
    forced = api.patch(
        f"{CM}/c?fieldManager=two&force=true", content=json.dumps(cm("c", a="2")), headers=APPLY
    )
    assert forced.json()["data"] == {"a": "2"}
    missing = api.patch(f"{CM}/c", content=json.dumps(cm("c")), headers=APPLY)
    assert missing.status_code == 400 and "fieldManager" in missing.json()["message"]


def test_selectors_filter_lists(api: httpx.Client) -> None:
    for name, labels in [("a", {"app": "x", "tier": "gpu"}), ("b", {"app": "y"}), ("c", {})]:
        obj = cm(name)
        obj["metadata"]["labels"] = labels
        api.post(CM, json=obj)

    def names(**params: str) -> list[str]:
        return sorted(i["metadata"]["name"] for i in api.get(CM, params=params).json()["items"])

    assert names(labelSelector="app=x") == ["a"]
    assert names(labelSelector="app!=x") == ["b", "c"]
    assert names(labelSelector="app in (x, y),!tier") == ["b"]
    assert names(labelSelector="tier") == ["a"]
    assert names(fieldSelector="metadata.name=c") == ["c"]
    assert parse_label_selector("a notin (1,2)")({"a": "3"})


def _watch(api: httpx.Client, url: str, **params: str) -> list[dict[str, Any]]:
    params = {"watch": "true", "timeoutSeconds": "1", **params}
    with api.stream("GET", url, params=params) as r:
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def test_watch_resumes_from_resource_version(api: httpx.Client) -> None:
    api.post(MMM, json=mmm("a"))
    api.post(MMM, json=mmm("b"))
    events = _watch(api, MMM, resourceVersion="1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]
    assert [e["type"] for e in _watch(api, MMM)] == ["ADDED", "ADDED"], "no version: a list"


def test_watch_answers_410_after_compaction(emu: EmulatorThread, api: httpx.Client) -> None:
    api.post(MMM, json=mmm("a"))
    api.post(MMM, json=mmm("b"))
    emu.call(emu.emulator.compact)
    events = _watch(api, MMM, resourceVersion="1")
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_expire_watches_breaks_open_streams(emu: EmulatorThread, api: httpx.Client) -> None:
    api.post(MMM, json=mmm("a"))
    seen: list[dict[str, Any]] = []

    import threading

    def reader() -> None:
        seen.extend(_watch(api, MMM, resourceVersion="1", timeoutSeconds="20"))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.3)
    emu.call(emu.emulator.expire_watches)
    t.join(10)
    assert not t.is_alive()
    assert seen and seen[-1]["type"] == "ERROR" and seen[-1]["object"]["code"] == 410


def test_finalizers_hold_deletion_until_released(api: httpx.Client) -> None:
    obj = mmm()
    obj["metadata"]["finalizers"] = ["serving.mmo.dev/finalizer"]
    api.post(MMM, json=obj)
    r = api.delete(f"{MMM}/a")
    assert r.json()["metadata"]["deletionTimestamp"]
    assert api.get(f"{MMM}/a").status_code == 200
    api.patch(f"{MMM}/a", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert api.get(f"{MMM}/a").status_code == 404


def test_owner_references_are_garbage_collected(emu: EmulatorThread, api: httpx.Client) -> None:
    owner = api.post(MMM, json=mmm()).json()
    child = api.post(CM, json=cm("child", owner)).json()
    api.post(CM, json=cm("grandchild", child))
    api.post(CM, json=cm("unrelated"))
    api.delete(f"{MMM}/a")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and api.get(f"{CM}/grandchild").status_code != 404:
        time.sleep(0.05)
    assert api.get(f"{CM}/child").status_code == 404
    assert api.get(f"{CM}/grandchild").status_code == 404, "collection cascades"
    assert api.get(f"{CM}/unrelated").status_code == 200


def test_orphan_propagation_keeps_dependents(api: httpx.Client) -> None:
    owner = api.post(MMM, json=mmm()).json()
    api.post(CM, json=cm("child", owner))
    api.delete(f"{MMM}/a", params={"propagationPolicy": "Orphan"})
    time.sleep(0.3)
    assert api.get(f"{CM}/child").status_code == 200


def test_crds_register_resources_in_discovery(api: httpx.Client) -> None:
    assert api.get("/apis/ray.io/v1/namespaces/ns/rayservices").status_code == 404
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "rayservices.ray.io"},
        "spec": {
            "group": "ray.io",
            "scope": "Namespaced",
            "names": {"plural": "rayservices", "kind": "RayService"},
            "versions": [{"name": "v1", "served": True, "subresources": {"status": {}}}],
        },
    }
    api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    found = api.get("/apis/ray.io/v1").json()["resources"]
    assert {r["name"] for r in found} == {"rayservices", "rayservices/status"}
    assert api.get("/apis/ray.io/v1/namespaces/ns/rayservices").status_code == 200
    api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayservices.ray.io")
    assert api.get("/apis/ray.io/v1/namespaces/ns/rayservices").status_code == 404


def test_injected_faults_answer_before_any_change(emu: EmulatorThread, api: httpx.Client) -> None:
    emu.call(emu.emulator.inject, 409, count=1, method="POST", resource="v1/configmaps")
    emu.call(emu.emulator.inject, 429, count=1, method="GET", name="c", retry_after=1)
    r = api.post(CM, json=cm("c"))
    assert r.status_code == 409 and r.json()["message"] == "injected fault 409"
    assert api.get(f"{CM}/c").status_code == 429
    assert api.get(f"{CM}/c").status_code == 404, "the failed create changed nothing"
    assert api.post(CM, json=cm("c")).status_code == 201


def test_field_set_helpers_round_trip() -> None:
    paths = field_paths({"a": {"b": 1, "c": [1, 2]}, "d": {}})
    assert paths == {("a", "b"), ("a", "c"), ("d",)}
    assert fields_v1_to_paths(paths_to_fields_v1(paths)) == paths
