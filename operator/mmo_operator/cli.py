"""The ``mmo`` command line.

The core commands (validate, crd, plan) need only pydantic and PyYAML. Commands that
need torch, ray or kopf live in their own modules, each with ``register(subparsers)``,
and import those libraries only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from mmo_operator.api.problems import InvalidResource

# Modules that add commands; each has `register(subparsers)`.
COMMAND_MODULES = (
    "mmo_serving.model.commands",  # train, eval
    "mmo_serving.commands",  # up, ask
    "mmo_operator.operator_commands",  # render, operator
)

EXIT_INVALID = 1


def _print_problems(err: InvalidResource, source: str) -> None:
    for p in err.problems:
        where = f"{source}: " if source and not p.message.startswith(source) else ""
        print(f"{where}{p}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    from mmo_operator.api.validation import validate_file

    results: list[dict[str, Any]] = []
    failed = 0
    for path in args.files:
        try:
            v = validate_file(path)
        except InvalidResource as e:
            failed += 1
            results.append(
                {
                    "file": path,
                    "valid": False,
                    "problems": [{"path": p.path, "message": p.message} for p in e.problems],
                }
            )
            if args.output == "text":
                _print_problems(e, path)
            continue
        results.append({"file": path, "valid": True, "name": v.model.name, "warnings": v.warnings})
        if args.output == "text":
            print(f"{path}: valid ({v.model.name}: {v.capacity.message})")
            for w in v.warnings:
                print(f"{path}: warning: {w}")
    if args.output == "json":
        print(json.dumps(results, indent=2))
    return EXIT_INVALID if failed else 0


def cmd_crd(args: argparse.Namespace) -> int:
    from mmo_operator.api.crd import build_crd, render_crd

    if args.output == "json":
        print(json.dumps(build_crd(), indent=2))
    else:
        sys.stdout.write(render_crd())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from mmo_operator.api.validation import (
        capacity_of,
        cross_field_problems,
        parse_model,
        read_file,
        resolve_architecture,
    )
    from mmo_operator.planning import plan_for_model

    try:
        model = parse_model(read_file(args.file))
        if args.redundant is not None:
            model.spec.experts.redundant_experts = args.redundant
        problems = cross_field_problems(model)
        if problems:
            raise InvalidResource(problems)
        arch = resolve_architecture(model)
    except InvalidResource as e:
        _print_problems(e, args.file)
        return EXIT_INVALID
    capacity = capacity_of(model, arch)
    out: dict[str, Any] = {
        "name": model.name,
        "fits": capacity.fits,
        "capacity": capacity.to_dict(),
        "placement": None,
    }
    code = 0
    if capacity.fits:
        try:
            plan = plan_for_model(model, arch, capacity, loads_path=args.loads)
        except (ValueError, InvalidResource) as e:
            print(f"{args.file}: {e}", file=sys.stderr)
            return EXIT_INVALID
        if plan is not None:
            out["placement"] = plan.model_dump(mode="json", by_alias=True)
    else:
        code = EXIT_INVALID
        if args.output != "text":
            print(f"{args.file}: spec.resources: {capacity.message}", file=sys.stderr)
    if args.output == "json":
        print(json.dumps(out, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(out, sort_keys=False), end="")
    else:
        _print_plan_text(out, capacity)
    return code


def _print_plan_text(out: dict[str, Any], capacity: Any) -> None:
    print(f"{out['name']}: {capacity.message}")
    for opt in capacity.options:
        print(f"  option: {opt}")
    for w in capacity.warnings:
        print(f"  warning: {w}")
    plan = out.get("placement")
    if plan:
        print(
            f"  placement: {plan['strategy']}, {plan['numGpus']} GPUs x "
            f"{plan['slotsPerGpu']} slots, balancedness {plan['balancedness']:.3f}"
        )
        for layer in plan["layers"]:
            moved = f", moved {layer['moved']}" if layer.get("moved") else ""
            print(f"    layer {layer['layer']}: balancedness {layer['balancedness']:.3f}{moved}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmo",
        description="Deploy multimodal Mixture-of-Experts models on Ray Serve and Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check MultimodalModel files as the admission webhook does")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("crd", help="print the generated CustomResourceDefinition")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_crd)

    p = sub.add_parser("plan", help="capacity and expert placement for a MultimodalModel")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--loads", metavar="LOADS.json", help='observed loads: {"layers": [[tokens per expert]]}'
    )
    p.add_argument("--redundant", type=int, metavar="N", help="override redundantExperts")
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.set_defaults(func=cmd_plan)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # that part is not installed
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
