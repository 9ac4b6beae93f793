"""Every sample's children validate against the schemas of the APIs that consume them.

- the RayService against KubeRay v1.7.0's CRD schema (hack/schemas);
- its serveConfigV2 against Ray's own ``ServeDeploySchema``;
- the PodMonitor against prometheus-operator's CRD schema;
- core children (ConfigMap, PDB, NetworkPolicies) with ``kubernetes-validate`` (strict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mmo_operator.api.problems import InvalidResource
from mmo_operator.builders import build_children
from mmo_operator.builders.app_args import plan_and_app_args
from mmo_operator.validation import validate, validate_file

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "hack" / "schemas"
SAMPLES = sorted((REPO / "manifests" / "samples").glob("*.yaml"))
EXTRA = [REPO / "tests" / "k8s" / "data" / "tiny.yaml"]
K8S_VERSION = "1.30.0"


def _strip_k8s_extensions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: _strip_k8s_extensions(v)
            for k, v in schema.items()
            if not k.startswith("x-kubernetes-")
        }
    if isinstance(schema, list):
        return [_strip_k8s_extensions(v) for v in schema]
    return schema


def _crd_schema(filename: str, version: str) -> dict[str, Any]:
    path = SCHEMAS / filename
    crd = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema: dict[str, Any] = _strip_k8s_extensions(v["schema"]["openAPIV3Schema"])
            return schema
    raise AssertionError(f"{filename} has no version {version}")


# Sizes of the built-in shapes model, used when its checkpoint is not built in this checkout.
BUILTIN_STANDIN = {
    "totalParams": 20_000_000,
    "activeParams": 6_000_000,
    "numLayers": 4,
    "numExperts": 8,
    "expertsPerToken": 2,
}


def _children(path: Path) -> list[dict[str, Any]]:
    try:
        validated = validate_file(path)
    except InvalidResource as e:
        if "unknown builtin model" not in str(e):
            raise
        doc = yaml.safe_load(path.read_text())
        doc["spec"]["model"]["architecture"] = BUILTIN_STANDIN
        validated = validate(doc)
    plan, args = plan_and_app_args(validated)
    return build_children(
        validated.model, plan, args=args, uid="0b7c1a52-5d2e-4f0e-9f43-5a3a1d2c0e11"
    )


def _one(children: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(c for c in children if c["kind"] == kind)


@pytest.fixture(scope="module", params=SAMPLES + EXTRA, ids=lambda p: p.name)
def children(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _children(request.param)


def test_rayservice_matches_kuberay_v1_7_schema(children: list[dict[str, Any]]) -> None:
    schema = _crd_schema("ray.io_rayservices.v1.7.0.yaml", "v1")
    rs = _one(children, "RayService")
    jsonschema.validate(rs, schema, cls=jsonschema.Draft7Validator)


def test_rayservice_rejects_a_broken_object_under_that_schema() -> None:
    """The schema check above can fail: a worker group without groupName does."""
    schema = _crd_schema("ray.io_rayservices.v1.7.0.yaml", "v1")
    rs = _one(_children(EXTRA[0]), "RayService")
    del rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError, match="groupName"):
        jsonschema.validate(rs, schema, cls=jsonschema.Draft7Validator)


def test_serve_config_matches_ray_serve_deploy_schema(children: list[dict[str, Any]]) -> None:
    from ray.serve import schema as schema_mod

    rs = _one(children, "RayService")
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    parsed = schema_mod.ServeDeploySchema.model_validate(config)
    app = parsed.applications[0]
    assert app.import_path == "mmo_serving.app:build_app"
    deployment = app.deployments[0]
    if app.args["engine"] == "mmo":  # the built-in engine's ranks live in the front's group
        assert deployment.placement_group_strategy in ("STRICT_PACK", "PACK")
    else:  # Ray Serve LLM reserves the engine's GPUs in its own deployment
        assert "placement_group_bundles" not in config["applications"][0]["deployments"][0]
    assert deployment.user_config is not None and "batching" in deployment.user_config


def test_podmonitor_matches_prometheus_operator_schema(children: list[dict[str, Any]]) -> None:
    schema = _crd_schema("monitoring.coreos.com_podmonitors.yaml", "v1")
    monitors = [c for c in children if c["kind"] == "PodMonitor"]
    for pm in monitors:
        jsonschema.validate(pm, schema, cls=jsonschema.Draft7Validator)


def test_core_children_validate_with_kubernetes_validate(children: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    core = [c for c in children if c["apiVersion"] in ("v1", "policy/v1", "networking.k8s.io/v1")]
    assert {c["kind"] for c in core} >= {"ConfigMap", "PodDisruptionBudget"}
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
