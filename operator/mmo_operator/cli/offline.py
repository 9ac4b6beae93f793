"""``mmo validate``, ``mmo crd``, ``mmo plan`` and ``mmo architecture``: the offline
commands, which need only the core (pydantic, PyYAML)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from mmo_operator.api.problems import InvalidResource, Problem

from .output import EXIT_INVALID, dump, invalid_result, print_problems


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def cmd_validate(args: argparse.Namespace) -> int:
    from mmo_operator.validation import validate_file

    results: list[dict[str, Any]] = []
    failed = 0
    for path in args.files:
        try:
            v = validate_file(path)
        except InvalidResource as e:
            failed += 1
            results.append(invalid_result(path, e.problems))
            if args.output == "text":
                print_problems(e.problems, path)
            continue
        results.append({"file": path, "valid": True, "name": v.model.name, "warnings": v.warnings})
        if args.output == "text":
            print(f"{path}: valid ({v.model.name}: {v.capacity.message})")
            for w in v.warnings:
                print(f"{path}: warning: {w}")
    if args.output == "json":
        dump(results, "json")
    return EXIT_INVALID if failed else 0


def cmd_crd(args: argparse.Namespace) -> int:
    from mmo_operator.api.crd import build_crd, render_crd

    if args.output == "json":
        print(json.dumps(build_crd(), indent=2))
    else:
        sys.stdout.write(render_crd())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from mmo_operator.api.parse import parse_model, read_file, resolve_architecture
    from mmo_operator.planning import plan_for_model
    from mmo_operator.planning.current import replan
    from mmo_operator.validation import (
        builtin_rule_problems,
        capacity_of,
        cross_field_problems,
    )

    if args.max_moves is not None and args.current is None:
        print("mmo plan: --max-moves needs --current PLAN.json", file=sys.stderr)
        return 2
    try:
        model = parse_model(read_file(args.file))
        if args.redundant is not None:
            model.spec.experts.redundant_experts = args.redundant
        problems = cross_field_problems(model)
        if problems:
            raise InvalidResource(problems)
        checkpoint_bytes = None
        if args.checkpoint is not None:
            checkpoint_bytes = _use_checkpoint(model, args.checkpoint)
        arch = resolve_architecture(model)
        problems = builtin_rule_problems(model, arch)
        if problems:
            raise InvalidResource(problems)
    except InvalidResource as e:
        return _plan_failed(args, e.problems)
    capacity = capacity_of(model, arch, checkpoint_bytes=checkpoint_bytes)
    out: dict[str, Any] = {
        "name": model.name,
        "fits": capacity.fits,
        "capacity": capacity.to_dict(),
        "placement": None,
    }
    code = 0
    if capacity.fits:
        try:
            if args.current is None:
                plan = plan_for_model(model, arch, capacity, loads_path=args.loads)
            else:
                churn = replan(
                    model,
                    arch,
                    capacity,
                    args.current,
                    loads_path=args.loads,
                    max_moves=args.max_moves,
                )
                plan, out["churn"] = churn.plan, churn.to_dict()
        except ValueError as e:
            return _plan_failed(args, [Problem("", str(e))])
        out["placement"] = plan.model_dump(mode="json", by_alias=True)
    else:
        code = EXIT_INVALID
        if args.output != "text":
            print(f"{args.file}: spec.resources: {capacity.message}", file=sys.stderr)
    if args.output == "text":
        _print_plan_text(out, capacity)
    else:
        dump(out, args.output)
    return code


def _use_checkpoint(model: Any, directory: str) -> int | None:
    """Put the architecture of DIR/config.json in the spec; the checkpoint's bytes, if
    its safetensors index gives them."""
    from mmo_operator.planning.checkpoint import (
        CheckpointConfigError,
        quantization_problem,
        read_checkpoint,
    )

    try:
        info = read_checkpoint(directory)
    except CheckpointConfigError as e:
        raise InvalidResource([Problem("--checkpoint", str(e))]) from e
    wrong = quantization_problem(info.quant_method, model.spec.model.quantization)
    if wrong:
        raise InvalidResource([Problem("spec.model.quantization", wrong)])
    model.spec.model.architecture = info.architecture
    return info.weight_bytes


def cmd_architecture(args: argparse.Namespace) -> int:
    from mmo_operator.planning.capacity import fmt_bytes
    from mmo_operator.planning.checkpoint import (
        QUANTIZATIONS_OF_METHOD,
        CheckpointConfigError,
        architecture_yaml,
        read_checkpoint,
    )

    try:
        info = read_checkpoint(args.directory)
    except CheckpointConfigError as e:
        print(f"mmo architecture: {e}", file=sys.stderr)
        return EXIT_INVALID
    block = architecture_yaml(info.architecture)
    if args.output == "json":
        dump(block, "json")
        return 0
    facts = [f"model_type {info.model_type}"]
    if info.quant_method:
        facts.append(f"quantization_config {info.quant_method}")
    valid = QUANTIZATIONS_OF_METHOD.get(info.quant_method)
    if valid:
        facts.append(f"quantization {' or '.join(valid)}")
    if info.weight_bytes:
        facts.append(f"weights {fmt_bytes(info.weight_bytes)}")
    if info.max_position_embeddings:
        facts.append(f"max_position_embeddings {info.max_position_embeddings}")
    facts.append("modalities [text, image]" if info.image else "modalities [text]")
    print(f"# {args.directory}: {', '.join(facts)}")
    sys.stdout.write(yaml.safe_dump(block, sort_keys=False))
    return 0


def _plan_failed(args: argparse.Namespace, problems: list[Problem]) -> int:
    """Problems on stderr, one a line; with -o json/yaml also the result on stdout."""
    print_problems(problems, args.file)
    if args.output != "text":
        dump(invalid_result(args.file, problems), args.output)
    return EXIT_INVALID


def _print_plan_text(out: dict[str, Any], capacity: Any) -> None:
    print(f"{out['name']}: {capacity.message}")
    for opt in capacity.options:
        print(f"  option: {opt}")
    for w in capacity.warnings:
        print(f"  warning: {w}")
    plan = out.get("placement")
    if not plan:
        return
    print(
        f"  placement: {plan['strategy']}, {plan['numGpus']} GPUs x "
        f"{plan['slotsPerGpu']} slots, balancedness {plan['balancedness']:.3f}"
    )
    churn = out.get("churn")
    if churn:
        scratch = churn["fromScratch"]
        print(
            f"  moved {churn['moved']} experts, balancedness {churn['balancednessBefore']:.3f}"
            f" -> {churn['balancedness']:.3f} (from scratch: moved {scratch['moved']}, "
            f"balancedness {scratch['balancedness']:.3f})"
        )
    for i, layer in enumerate(plan["layers"]):
        line = f"    layer {layer['layer']}: balancedness {layer['balancedness']:.3f}"
        if churn:
            line += f", moved {layer['moved']} (from scratch {scratch['movedPerLayer'][i]})"
        elif layer.get("moved"):
            line += f", moved {layer['moved']}"
        print(line)


def register(sub: Any) -> None:
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
        "--loads",
        metavar="LOADS.json",
        help='observed loads: {"layers": [[tokens per expert]]}, or the JSON a running '
        "model returns on GET /v1/expert-load (its tokens, summed over ranks)",
    )
    p.add_argument("--redundant", type=_non_negative, metavar="N", help="override redundantExperts")
    p.add_argument(
        "--current",
        metavar="PLAN.json",
        help="the plan in force (the placement of `mmo plan -o json` or the placement "
        "ConfigMap): re-plan with few moves and report them against a plan from scratch",
    )
    p.add_argument(
        "--max-moves",
        type=_non_negative,
        metavar="N",
        help="with --current: most experts moved per layer",
    )
    p.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="plan with the architecture of DIR/config.json (and the real bytes of its "
        "safetensors index) instead of the spec's",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "architecture",
        help="print the architecture block of a MultimodalModel from a Hugging Face "
        "checkpoint's config.json",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_architecture)
