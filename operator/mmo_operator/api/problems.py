"""Validation problems: one per wrong field, with the path a user can find in the YAML."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """``path`` is the dotted field path (``spec.autoscaling.maxReplicas``), ``message``
    says what is wrong and what would be valid."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidResource(ValueError):
    """A resource that cannot be used, with every problem found."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(str(p) for p in problems))


def format_loc(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """``("spec", "experts", 0, "x")`` -> ``spec.experts[0].x``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out
