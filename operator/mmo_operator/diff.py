"""Comparing what the builders produce with what the API server holds (pure)."""

from __future__ import annotations

from typing import Any

from mmo_operator.builders.common import HASH_ANNOTATION
from mmo_operator.objects import Obj


def contains(desired: Any, observed: Any) -> bool:
    """Every field of ``desired`` is in ``observed`` with the same value (defaults and
    fields other managers own may be extra in ``observed``). An empty list or map may be
    missing: the API server leaves out empty fields (``omitempty``) when it answers."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(
            contains(v, observed[k]) if k in observed else v in ([], {}) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(desired) == len(observed)
            and all(contains(d, o) for d, o in zip(desired, observed, strict=True))
        )
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return float(desired) == float(observed)
    return bool(desired == observed)


def needs_apply(desired: Obj, observed: Obj | None) -> bool:
    if observed is None:
        return True
    want = desired["metadata"].get("annotations", {}).get(HASH_ANNOTATION)
    have = (observed.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
    return want != have or not contains(desired, observed)


def owned_by(obj: Obj, owner: Obj) -> bool:
    uid = (owner.get("metadata") or {}).get("uid")
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("uid") == uid for r in refs)


def annotation(obj: Obj | None, key: str) -> str | None:
    value = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(key)
    return value if isinstance(value, str) else None
