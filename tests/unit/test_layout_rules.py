"""Layout rules of DESIGN.md: pure modules stay pure, the core CLI needs no heavy deps."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mmo_operator.api.reference import field_reference

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    ROOT / "operator/mmo_operator/api",
    ROOT / "operator/mmo_operator/planning",
    ROOT / "operator/mmo_operator/policy",
    ROOT / "operator/mmo_operator/builders",
    ROOT / "operator/mmo_operator/status.py",
    ROOT / "serving/mmo_serving/config.py",
    ROOT / "serving/mmo_serving/backend.py",
    ROOT / "serving/mmo_serving/deployment.py",
    ROOT / "serving/mmo_serving/gateway",
]
HEAVY = {"kopf", "kubernetes", "ray", "torch"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.exists() else []
    return out


@pytest.mark.parametrize("path", _files(PURE), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_imports_no_io_framework(path: Path) -> None:
    assert not (_imports(path) & HEAVY), f"{path} imports {_imports(path) & HEAVY}"


def test_no_init_in_plain_folders() -> None:
    assert not (ROOT / "operator/__init__.py").exists()
    assert not (ROOT / "serving/__init__.py").exists()
    assert not list((ROOT / "tests").rglob("__init__.py"))
    assert not [p for p in (ROOT / "tests").rglob("operator") if p.is_dir()]


def test_core_commands_work_without_heavy_packages() -> None:
    """`mmo validate / plan / crd` with torch, ray, kopf and kubernetes unimportable."""
    blocker = "; ".join(f"sys.modules[{m!r}] = None" for m in sorted(HEAVY))
    code = (
        f"import sys; {blocker}\n"
        "from mmo_operator.cli import main\n"
        "rc = main(['validate', 'manifests/samples/deepseek-v3-int4.yaml'])\n"
        "rc |= main(['plan', '-o', 'json', 'manifests/samples/deepseek-v3-int4.yaml'])\n"
        "rc |= main(['crd'])\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_readme_field_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert field_reference() in readme, "README field reference is stale: run `make docs`"
