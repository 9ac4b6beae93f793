"""Checkpoint directories: ``model.safetensors`` + ``config.json`` + ``tokenizer.json``.

Sources: ``builtin://shapes-moe`` (shipped in ``mmo_serving/assets/``),
``pvc://CLAIM/PATH`` (the claim mounted at ``$MMO_PVC_ROOT/CLAIM``, default
``/mnt/models/CLAIM``), ``file:///dir`` or a plain local directory.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmo_serving.model.config import ConfigError, ModelConfig
from mmo_serving.model.tokenizer import TokenizerError, WordTokenizer
from mmo_serving.model.transformer import ShapesMoE

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
FILES = (WEIGHTS, CONFIG, TOKENIZER)
BUILTINS = ("shapes-moe",)
DEFAULT_PVC_ROOT = "/mnt/models"


class CheckpointError(ValueError):
    """A checkpoint source cannot be resolved or its files are missing, corrupt or
    inconsistent. The message names the file and what is wrong."""


def resolve_source(source: str) -> Path:
    """Map a model source to a local checkpoint directory (not checked for existence)."""
    if not isinstance(source, str) or not source.strip():
        raise CheckpointError(
            "model source is empty; valid: builtin://NAME, pvc://CLAIM/PATH or a directory"
        )
    if source.startswith("builtin://"):
        name = source[len("builtin://") :].strip("/")
        if name not in BUILTINS:
            raise CheckpointError(
                f"unknown builtin model {name!r} in {source!r}; valid: "
                + ", ".join("builtin://" + b for b in BUILTINS)
            )
        return Path(str(resources.files("mmo_serving").joinpath("assets", name)))
    if source.startswith("pvc://"):
        rest = source[len("pvc://") :].strip("/")
        claim, _, path = rest.partition("/")
        if not claim:
            raise CheckpointError(
                f"pvc source {source!r} has no claim name; expected pvc://CLAIM/PATH"
            )
        if ".." in Path(rest).parts:
            raise CheckpointError(f"pvc source {source!r} must not contain '..'")
        root = Path(os.environ.get("MMO_PVC_ROOT", DEFAULT_PVC_ROOT))
        return root / claim / path
    if source.startswith("file://"):
        return Path(source[len("file://") :])
    if "://" in source:
        scheme = source.split("://", 1)[0]
        raise CheckpointError(
            f"unsupported model source scheme {scheme!r} in {source!r}; "
            "valid: builtin://, pvc://, file:// or a local directory"
        )
    return Path(source)


def save_checkpoint(model: ShapesMoE, tokenizer: WordTokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    save_file(state, str(out / WEIGHTS), metadata={"architecture": model.config.architecture})
    model.config.save(out / CONFIG)
    tokenizer.save(out / TOKENIZER)
    return out


def _check_dir(path: Path, source: str) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} (from {source!r}) does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} (from {source!r}) is not a directory")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is missing {', '.join(missing)} "
            f"(a checkpoint needs {', '.join(FILES)})"
        )


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    f = path / WEIGHTS
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{f} is truncated or corrupt ({f.stat().st_size} bytes): {e}") from e


def load_model(
    source: str | Path, device: str | torch.device = "cpu"
) -> tuple[ShapesMoE, WordTokenizer, ModelConfig]:
    """Load (model in eval mode, tokenizer, config) from a source or a directory."""
    src = str(source)
    path = resolve_source(src) if isinstance(source, str) else Path(source)
    _check_dir(path, src)
    try:
        cfg = ModelConfig.load(path / CONFIG)
        tok = WordTokenizer.load(path / TOKENIZER)
    except (ConfigError, TokenizerError) as e:
        raise CheckpointError(str(e)) from e
    if len(tok) != cfg.vocab_size:
        raise CheckpointError(
            f"{path / TOKENIZER} has {len(tok)} tokens but {path / CONFIG} "
            f"says vocab_size={cfg.vocab_size}"
        )
    state = _load_weights(path)
    model = ShapesMoE(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)}, config expects {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(
            f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    if wrong:
        problems.append(
            "shape mismatch " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else "")
        )
    if problems:
        raise CheckpointError(
            f"{path / WEIGHTS} does not match {path / CONFIG}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, tok, cfg
