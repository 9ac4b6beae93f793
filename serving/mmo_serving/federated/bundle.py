"""The project's Flower app: its project file, its bundle (FAB), signed and published.

:func:`write_app` writes the app project (a ``pyproject.toml`` whose ServerApp and
ClientApp are ``mmo_serving.federated``'s, installed in the image: the bundle carries
no code of its own). :func:`build_fab` is ``flwr build`` of it, with the default run
config; :func:`sign_and_publish` signs that bundle with the project's key
(:mod:`.trust`) and stores it in an app registry directory (:mod:`.registry`). A run
names the published bundle as ``@mmo/mmo-federated==0.1.0`` and passes its own run
config as overrides (``flwr run -c``): the signature covers the components and the
defaults, not the overrides (the sites' DP parameters come from their node config,
which wins over any run config).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmo_serving.federated import registry, trust

APP_NAME = "mmo-federated"
PUBLISHER = "mmo"
APP_VERSION = "0.1.0"
APP_ID = f"@{PUBLISHER}/{APP_NAME}"
APP_SPEC = f"{APP_ID}=={APP_VERSION}"

DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "num-rounds": 3,
    "min-clients": 3,
    "model-source": "builtin://shapes-moe",
    "head-init": "checkpoint",
    "clip-norm": 1.0,
    "noise-multiplier": 1.0,
    "local-epochs": 2,
    "lr": 0.01,
    "scenes-per-site": 120,
    "seed": 0,
    "round-timeout": 600.0,
    "out-dir": "",
    "secure-aggregation": False,
    "keep-received": False,
}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def check_run_config(run_config: Mapping[str, Any]) -> None:
    unknown = sorted(set(run_config) - set(DEFAULT_RUN_CONFIG))
    if unknown:
        raise ValueError(f"unknown run config keys {unknown}; valid: {sorted(DEFAULT_RUN_CONFIG)}")


def write_app(app_dir: Path, run_config: Mapping[str, Any] | None = None) -> Path:
    """The Flower app project (a pyproject.toml whose components are ours)."""
    check_run_config(run_config or {})
    cfg = {**DEFAULT_RUN_CONFIG, **(run_config or {})}
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f'name = "{APP_NAME}"',
        f'version = "{APP_VERSION}"',
        'description = "mmo: federated fine-tuning of the answer head"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        f'publisher = "{PUBLISHER}"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "mmo_serving.federated.server:app"',
        'clientapp = "mmo_serving.federated.client:app"',
        "",
        "[tool.flwr.app.config]",
        *(f'"{k}" = {toml_value(v)}' for k, v in cfg.items()),
        "",
    ]
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text("\n".join(lines))
    return app_dir


def build_fab(run_config: Mapping[str, Any] | None = None) -> bytes:
    """``flwr build`` of :func:`write_app`'s project (needs ``flwr``)."""
    from flwr.cli.build import build_fab_from_disk

    with tempfile.TemporaryDirectory(prefix="mmo-fab-") as tmp:
        return build_fab_from_disk(write_app(Path(tmp) / "app", run_config))


def sign_and_publish(
    registry_root: Path, signing_key: Path, run_config: Mapping[str, Any] | None = None
) -> str:
    """Build, sign with ``signing_key`` and publish the bundle; returns its app spec."""
    key = trust.load_key(signing_key)
    fab = build_fab(run_config)
    registry.publish(registry_root, APP_ID, APP_VERSION, fab, [trust.sign_fab(fab, key)])
    return APP_SPEC
