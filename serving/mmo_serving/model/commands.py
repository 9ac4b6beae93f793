"""``mmo train`` and ``mmo eval`` (registered into the ``mmo`` CLI by ``register``).

torch is imported only inside the command functions, so ``mmo validate`` and friends
stay light."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BUILTIN = "builtin://shapes-moe"


def register(subparsers: Any) -> None:
    """Add ``train`` and ``eval`` to an argparse ``add_subparsers()`` object."""
    t = subparsers.add_parser(
        "train",
        help="train the built-in shapes-moe model (CPU, about 18 minutes on 2 cores)",
        description="Train shapes-moe on the synthetic shapes task, then evaluate it on "
        "the held-out split. Reproduces the shipped checkpoint with the defaults.",
    )
    t.add_argument(
        "--out", default="shapes-moe", help="checkpoint directory to write (default: ./shapes-moe)"
    )
    t.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default: the shipped recipe)"
    )
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--batch-size", type=int, default=None, help="images per step")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    t.add_argument(
        "--eval-images", type=int, default=500, help="held-out images for the final evaluation"
    )
    t.add_argument("-o", "--output", choices=["text", "json"], default="text")
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser(
        "eval",
        help="evaluate a shapes-moe checkpoint (accuracy, retrieval, int8, routing)",
        description="Answer accuracy per question kind and image->caption recall@1 on the "
        "held-out split; optionally INT8 against float32 and per-expert routing loads.",
    )
    e.add_argument(
        "--checkpoint", default=BUILTIN, help=f"model source or directory (default {BUILTIN})"
    )
    e.add_argument(
        "--quantize", choices=["none", "int8"], default="none", help="also evaluate an INT8 copy"
    )
    e.add_argument(
        "--routing",
        metavar="OUT.json",
        help="write per-layer, per-expert token counts (mmo plan --loads)",
    )
    e.add_argument(
        "--images", type=int, default=500, help="held-out images (4 questions each; default 500)"
    )
    e.add_argument("--seed", type=int, default=0, help="held-out stream seed (default 0)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("-o", "--output", choices=["text", "json"], default="text")
    e.set_defaults(func=cmd_eval)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise SystemExit(f"mmo: error: {name} must be a positive integer, got {value}")


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from mmo_serving.model.checkpoint import save_checkpoint
    from mmo_serving.model.evaluate import evaluate
    from mmo_serving.model.train import TrainSettings, train

    for name in ("steps", "batch_size", "threads", "eval_images"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    settings = TrainSettings(seed=args.seed)
    if args.steps is not None:
        settings.steps = args.steps
    if args.batch_size is not None:
        settings.batch_size = args.batch_size
    if args.threads is not None:
        settings.threads = args.threads
    bar = tqdm(total=settings.steps, desc="train shapes-moe", unit="step", file=sys.stderr)

    def progress(step: int, losses: dict[str, float]) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})

    t0 = time.perf_counter()
    model, tok, info = train(settings, progress=progress)
    bar.close()
    out = save_checkpoint(model, tok, Path(args.out))
    print(f"evaluating on {args.eval_images} held-out images ...", file=sys.stderr)
    report = evaluate(model, tok, n_images=args.eval_images)
    report["training"] = {**info, "total_seconds": round(time.perf_counter() - t0, 1)}
    (out / "train_report.json").write_text(json.dumps(report, indent=1) + "\n")
    _print(report, args.output, f"checkpoint written to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from mmo_serving.model.checkpoint import CheckpointError, load_model
    from mmo_serving.model.evaluate import evaluate

    _positive("--images", args.images)
    _positive("--threads", args.threads)
    torch.set_num_threads(args.threads or 1)
    try:
        model, tok, _ = load_model(args.checkpoint)
    except CheckpointError as e:
        print(f"mmo eval: {e}", file=sys.stderr)
        return 2
    report = evaluate(
        model,
        tok,
        n_images=args.images,
        seed=args.seed,
        quantize=None if args.quantize == "none" else args.quantize,
        routing=bool(args.routing),
    )
    report["checkpoint"] = args.checkpoint
    if args.routing:
        Path(args.routing).write_text(json.dumps(report["routing"], indent=1) + "\n")
    _print(report, args.output, f"routing loads written to {args.routing}" if args.routing else "")
    return 0


def _print(report: dict[str, Any], fmt: str, footer: str) -> None:
    if fmt == "json":
        print(json.dumps(report, indent=1))
        return
    qa = report["qa"]
    print(f"answer exact-match: {qa['accuracy']:.1%} on {qa['questions']} held-out questions")
    for kind, acc in qa["per_kind"].items():
        print(f"  {kind:<8} {acc:.1%}  ({qa['per_kind_questions'][kind]} questions)")
    r = report["retrieval"]
    print(
        f"image->caption recall@1: {r['recall_at_1']:.1%} "
        f"({r['images']} images, galleries of {r['gallery']})"
    )
    if "int8" in report:
        q = report["int8"]
        print(
            f"int8: layers {q['int8_layer_bytes'] / 1e6:.2f} MB "
            f"vs {q['float32_layer_bytes'] / 1e6:.2f} MB "
            f"float32 (ratio {q['size_ratio']:.3f}); accuracy {q['accuracy']:.1%} "
            f"(drop {q['accuracy_drop_points']:.2f} points); recall@1 {q['recall_at_1']:.1%}; "
            f"speed x{q['speedup']:.2f} vs float32"
        )
    if "routing" in report:
        loads = report["routing"]["layers"]
        for i, row in enumerate(loads):
            total = sum(row) or 1
            print(f"  layer {i} expert share: " + " ".join(f"{v / total:.2f}" for v in row))
    if "training" in report:
        tr = report["training"]
        print(f"trained {tr['steps']} steps x {tr['batch_size']} images in {tr['train_seconds']} s")
    if footer:
        print(footer)
