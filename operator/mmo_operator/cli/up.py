"""``mmo up FILE``: validate FILE and build the Serve application's AppArgs exactly as
the operator does, then hand them to :func:`mmo_serving.up_runner.run_up`, which runs them
on a private local Ray.

Importing this module is light: ray and the app load inside ``run_up``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmo_operator.api.problems import InvalidResource
from mmo_serving.config import AppArgs
from mmo_serving.extras import UP_NEEDS, missing_serving_extra


class SpecError(Exception):
    """FILE is unreadable or invalid: one line per problem."""


def up_app_args(path: str) -> AppArgs:
    """The operator's validation, plan and AppArgs for the spec in ``path``."""
    from mmo_operator.builders.app_args import plan_and_app_args
    from mmo_operator.policy.admission import egress_notes
    from mmo_operator.validation import validate_file

    try:
        # local: a loopback endpoint (a stand-in cloud on this machine) is allowed here,
        # with a warning; the operator and the webhook refuse it
        validated = validate_file(path, local=True)
    except InvalidResource as exc:
        lines = [f"{path}: {p}" for p in exc.problems]
        raise SpecError("\n".join(lines) or str(exc)) from exc
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror or exc}") from exc
    for note in egress_notes(validated.model, local=True):
        print(f"mmo up: warning: {note}", file=sys.stderr)
    _plan, args = plan_and_app_args(validated)
    return args


def cmd_up(args: argparse.Namespace) -> int:
    missing = missing_serving_extra("up", UP_NEEDS)
    if missing:
        print(missing, file=sys.stderr)
        return 1
    from mmo_serving.up_runner import UpOptions, run_up

    try:
        app_args = up_app_args(args.file)
    except SpecError as exc:
        print(f"mmo up: {exc}", file=sys.stderr)
        return 1
    return run_up(
        app_args,
        UpOptions(
            source=args.file,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            num_cpus=args.num_cpus,
            ca_bundle=args.ca_bundle,
            audit_file=args.audit_file,
            timeout_s=args.timeout,
            verbose=args.verbose,
            accelerator=args.accelerator,
        ),
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "up",
        help="serve a MultimodalModel on a private local Ray (no cluster needed)",
        description=(
            "Validate FILE, plan the experts and build the Serve application exactly as "
            "the operator does, then run it on a private local Ray with logical GPUs. "
            "Ctrl-C stops everything."
        ),
    )
    p.add_argument("file", metavar="FILE", help="a MultimodalModel YAML file")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: %(default)s)")
    p.add_argument("--port", type=int, help="HTTP port (default: spec.serving.port)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="Ray's Prometheus metrics port (default: %(default)s)",
    )
    p.add_argument("--num-cpus", type=int, help="logical CPUs for Ray (default: max(4, cores))")
    p.add_argument(
        "--ca-bundle",
        metavar="PEM",
        help="hybrid mode: CA bundle to verify the cloud endpoint (e.g. a self-signed one)",
    )
    p.add_argument(
        "--audit-file",
        metavar="PATH",
        help="audit lines (JSON, one per decision) go here (default: a file in the temp dir)",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for readiness")
    p.add_argument(
        "--accelerator",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="engine vllm: run vLLM on the GPU or the CPU (default: %(default)s, the GPU "
        "when torch sees one)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's and Serve's logs")
    p.set_defaults(func=cmd_up)
