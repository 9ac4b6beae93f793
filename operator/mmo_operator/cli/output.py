"""How the commands print results and problems, and their exit codes."""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

from mmo_operator.api.problems import Problem

EXIT_INVALID = 1
EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE


def print_problems(problems: list[Problem], source: str) -> None:
    """One line per problem on stderr, prefixed with ``source`` unless it says it already."""
    for p in problems:
        where = f"{source}: " if source and not p.message.startswith(source) else ""
        print(f"{where}{p}", file=sys.stderr)


def invalid_result(path: str, problems: list[Problem]) -> dict[str, Any]:
    """The machine-readable result of a file that failed (`-o json`)."""
    return {
        "file": path,
        "valid": False,
        "problems": [{"path": p.path, "message": p.message} for p in problems],
    }


def dump(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
