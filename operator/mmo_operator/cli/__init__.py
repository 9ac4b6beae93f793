"""The ``mmo`` command line: one module per command group, each with ``register(sub)``.

- :mod:`.offline`: validate, crd, plan, architecture (the core: pydantic and PyYAML);
- :mod:`.up`: up (a private local Ray; the serving extra);
- :mod:`.cluster`: render, and operator (kopf and the kubernetes client);
- ``mmo_serving.ask``: ask; ``mmo_serving.model.commands``: train, eval.

Importing any of them is light: torch, ray, kopf and httpx load inside the command that
needs them, so the core commands work with only the core installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mmo_serving import ask
from mmo_serving.model import commands as model_commands

from . import cluster, offline, up
from .output import EXIT_BROKEN_PIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmo",
        description="Deploy multimodal Mixture-of-Experts models on Ray Serve and Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (offline, model_commands, up, ask, cluster):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (captured)
        pass
