"""Reading a MultimodalModel document: YAML with no key given twice, then the schema
(pydantic, same constraints as the CRD) with problems that name the field path, what is
wrong and what would be valid."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .builtin import UnknownBuiltin, builtin_architecture
from .problems import InvalidResource, Problem, format_loc
from .v1alpha1 import (
    API_VERSION,
    KIND,
    PATTERN_HINTS,
    Architecture,
    MultimodalModel,
    builtin_name,
    is_builtin,
)

# --- reading files ------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Refuses a key given twice in one mapping (kubectl does; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            if isinstance(key, str | int | float | bool):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_document(text: str, source: str = "<input>") -> dict[str, Any]:
    """Exactly one YAML (or JSON) mapping, or InvalidResource saying why not."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidResource([Problem("", f"{source}: not valid YAML{where}: {problem}")]) from e
    if not docs:
        raise InvalidResource([Problem("", f"{source}: empty document; expected a {KIND}")])
    if len(docs) > 1:
        raise InvalidResource(
            [Problem("", f"{source}: {len(docs)} YAML documents; give one {KIND} per file")]
        )
    doc = docs[0]
    if not isinstance(doc, dict):
        raise InvalidResource(
            [Problem("", f"{source}: expected a mapping ({KIND}), got {type(doc).__name__}")]
        )
    return doc


def read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InvalidResource([Problem("", f"{p}: cannot read: {e.strerror}")]) from e
    return read_document(text, str(p))


# --- schema -------------------------------------------------------------------------------


# --- schema -------------------------------------------------------------------------------


def _type_check(doc: dict[str, Any]) -> list[Problem]:
    problems = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(
            Problem("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}")
        )
    if doc.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}, got {doc.get('kind')!r}"))
    return problems


def _unwrap(tp: Any) -> Any:
    """The model class inside Optional[...] / list[...] / dict[..., ...], if any."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, list, dict, typing.Annotated):
        for arg in typing.get_args(tp):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return tp


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    cls: Any = MultimodalModel
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        by_alias = {(f.alias or n): f for n, f in cls.model_fields.items()}
        f = by_alias.get(part) or cls.model_fields.get(part)
        if f is None:
            return None
        cls = _unwrap(f.annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _allowed_fields(cls: type[BaseModel]) -> str:
    return ", ".join(sorted((f.alias or n) for n, f in cls.model_fields.items()))


# Strict types, as the API server: a quoted "8" is a string, not an integer.
EXPECTED_TYPES = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
}


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}{_unquote_hint(value)}"
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    return "null" if value is None else repr(value)


def _unquote_hint(text: str) -> str:
    if text in ("true", "false"):
        return " (write it without quotes)"
    try:
        number = float(text)
    except ValueError:
        return ""
    if number.is_integer() and not text.strip().lstrip("+-").isdigit():
        return f" (write {int(number)})"  # YAML 1.1 reads 6.71e11 as a string
    return " (write it without quotes)"


def _schema_problem(err: Any) -> Problem:
    loc = tuple(err["loc"])
    path = format_loc(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = f"; allowed fields: {_allowed_fields(parent)}" if parent else ""
        return Problem(path, f"unknown field{allowed}")
    if kind == "missing":
        return Problem(path, "required field is missing")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    if kind == "string_pattern_mismatch":
        msg = PATTERN_HINTS.get(err.get("ctx", {}).get("pattern"), msg)
    elif kind in EXPECTED_TYPES:
        return Problem(path, f"expected {EXPECTED_TYPES[kind]}, got {_yaml_value(got)}")
    if kind not in ("model_type", "dict_type") and not isinstance(got, dict | list):
        msg = f"{msg} (got {got!r})"
    return Problem(path, msg)


def parse_model(doc: dict[str, Any]) -> MultimodalModel:
    problems = _type_check(doc)
    if problems:
        raise InvalidResource(problems)
    try:
        # by_name=False: only the wire (camelCase) names, as the CRD; strict: no "8" for 8
        return MultimodalModel.model_validate(doc, strict=True, by_alias=True, by_name=False)
    except ValidationError as e:
        raise InvalidResource([_schema_problem(err) for err in e.errors()]) from e


def resolve_architecture(model: MultimodalModel) -> Architecture:
    spec = model.spec.model
    if spec.architecture is not None:
        return spec.architecture
    if is_builtin(spec.source):
        try:
            return builtin_architecture(builtin_name(spec.source))
        except UnknownBuiltin as e:
            raise InvalidResource([Problem("spec.model.source", str(e))]) from e
    raise InvalidResource(
        [Problem("spec.model.architecture", "required unless the source is builtin://")]
    )
