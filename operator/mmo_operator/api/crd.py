"""Generate the CustomResourceDefinition from the pydantic models (``mmo crd``).

Pydantic's JSON schema is turned into a Kubernetes structural schema: references
inlined, ``Optional`` unwrapped, OpenAPI v3.0 spellings, defaults that the API server
applies (``{}`` for nested objects, so their own defaults apply), and the cross-field
rules of ``rules.py`` as ``x-kubernetes-validations``.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .parse import _unwrap
from .rules import RULES
from .v1alpha1 import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    MultimodalModelSpec,
    MultimodalModelStatus,
)

_DROP = {"title", "discriminator"}

PRINTER_COLUMNS = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Mode", "type": "string", "jsonPath": ".spec.isolation.mode"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.capacity.gpus"},
    {"name": "Balance", "type": "number", "jsonPath": ".status.placement.balancedness"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].split("/")[-1]]
            merged = {**_inline(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
            return _inline(merged, defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node.pop(key) if o.get("type") != "null"]
            if len(options) != 1:
                raise ValueError(f"cannot express {key} with {len(options)} branches in a CRD")
            node = {**options[0], **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in _DROP or k == "default":
            continue
        if k == "additionalProperties" and isinstance(v, bool):
            continue  # structural schemas prune unknown fields; `mmo validate` rejects them
        if k == "properties":
            out[k] = {name: _structural(p) for name, p in v.items()}
        elif k in ("items", "additionalProperties") and isinstance(v, dict):
            out[k] = _structural(v)
        elif k == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = v, True
        elif k == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = v, True
        elif k == "maxLength" and node.get("type") == "object":
            out["maxProperties"] = v
        else:
            out[k] = v
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _default_for(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {}
    return value


def _apply_defaults(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Put each field's default on its schema node, recursively."""
    props = schema.get("properties", {})
    for name, f in cls.model_fields.items():
        alias = f.alias or name
        node = props.get(alias)
        if node is None:
            continue
        if f.default_factory is not None:
            node["default"] = _default_for(f.default_factory())  # type: ignore[call-arg]
        elif f.default is not PydanticUndefined and f.default is not None:
            node["default"] = _default_for(f.default)
        inner = _unwrap(f.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            target = node.get("items", node) if typing.get_origin(f.annotation) is list else node
            if node.get("type") == "array":
                target = node["items"]
            _apply_defaults(target, inner)


def object_schema(cls: type[BaseModel]) -> dict[str, Any]:
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(_inline(raw, defs))
    _apply_defaults(schema, cls)
    return schema


def _node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = schema
    for part in path:
        node = node["properties"][part]
    return node


def spec_schema() -> dict[str, Any]:
    schema = object_schema(MultimodalModelSpec)
    for rule in RULES:
        entry = {"rule": rule.cel, "message": rule.message}
        if rule.field:
            entry["fieldPath"] = "." + rule.field
        _node(schema, rule.at).setdefault("x-kubernetes-validations", []).append(entry)
    return schema


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "mmo", "app.kubernetes.io/part-of": "mmo"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["mmo"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A multimodal Mixture-of-Experts model served by "
                            "Ray Serve, with its expert placement and data-isolation policy.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": object_schema(MultimodalModelStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `mmo crd` from mmo_operator.api; do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
