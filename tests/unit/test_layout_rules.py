"""Layout rules: pure modules stay pure, imports point one way (the layer order below),
no import circle, no dynamic imports of the project's own modules, and the core CLI needs
no heavy dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
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


# --- one-way arrows ------------------------------------------------------------------------

PACKAGES = {"mmo_operator": ROOT / "operator", "mmo_serving": ROOT / "serving"}

# mmo_operator's layers, lowest first: a module imports only its own layer or lower ones.
# Keyed by the first name under mmo_operator (a subpackage or a top-level module); a new
# top-level module fails test_every_operator_module_has_a_layer until it is placed here.
OPERATOR_LAYERS: dict[str, int] = {
    # 0: the API model, its schema and rules
    "api": 0,
    "objects": 0,
    # 1: placement, capacity, checkpoints, the plan in force
    "planning": 1,
    # 2: isolation admission, engine arguments, addresses
    "policy": 2,
    # 3: the validation pipeline (parse, rules, capacity, isolation, engine)
    "validation": 3,
    # 4: desired children as plain dicts
    "builders": 4,
    # 5: the API client and what is read from or written to the cluster
    "kube": 5,
    "status": 5,
    "diff": 5,
    "events": 5,
    "metrics": 5,
    "model_state": 5,
    # 6: reconciling one model
    "reconcile": 6,
    "children": 6,
    "worker_bounds": 6,
    "catch_up": 6,
    "rebalance_timer": 6,
    # 7: kopf handlers
    "handlers": 7,
    # 8: the command line
    "cli": 8,
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the two packages: dotted name -> (file, is a package)."""
    out = {}
    for package, base in PACKAGES.items():
        for path in sorted((base / package).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


MODULES = _modules()


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _project_imports(module: str) -> set[str]:
    """The project modules ``module`` imports (``from pkg import sub`` names the submodule)."""
    path, is_package = MODULES[module]
    out = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = _absolute(module, is_package, node)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        out |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return out


GRAPH = {module: _project_imports(module) for module in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    return OPERATOR_LAYERS[parts[1]] if len(parts) > 1 else 0


def test_every_operator_module_has_a_layer() -> None:
    tops = {m.split(".")[1] for m in MODULES if m.startswith("mmo_operator.")}
    assert not tops - OPERATOR_LAYERS.keys(), (
        f"place these in OPERATOR_LAYERS: {tops - OPERATOR_LAYERS.keys()}"
    )
    assert not OPERATOR_LAYERS.keys() - tops, "OPERATOR_LAYERS names modules that do not exist"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("mmo_operator")))
def test_operator_imports_point_down(module: str) -> None:
    upward = sorted(
        f"{target} (layer {_layer(target)})"
        for target in GRAPH[module]
        if target.startswith("mmo_operator") and _layer(target) > _layer(module)
    )
    assert not upward, f"{module} (layer {_layer(module)}) imports a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("mmo_serving")))
def test_serving_never_imports_the_operator(module: str) -> None:
    operator = sorted(t for t in GRAPH[module] if t.startswith("mmo_operator"))
    assert not operator, f"{module} imports {operator}"


def _dynamic_imports(module: str) -> list[str]:
    """importlib.import_module / __import__ calls, and try-imports of project modules."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module][0].read_text())):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                found.append(f"line {node.lineno}: {name}()")
        elif isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            for inner in node.body:
                for imp in _import_nodes(inner):
                    names = (
                        [a.name for a in imp.names]
                        if isinstance(imp, ast.Import)
                        else [_absolute(module, MODULES[module][1], imp)]
                    )
                    if any(n.split(".")[0] in PACKAGES for n in names):
                        found.append(f"line {imp.lineno}: try-import of {names}")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_dynamic_import_of_own_modules(module: str) -> None:
    assert not _dynamic_imports(module), f"{module}: {_dynamic_imports(module)}"


def _cycle() -> list[str] | None:
    """One import circle between modules, found by a depth-first search, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH or target == module:
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_circle() -> None:
    circle = _cycle()
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_cycle_search_finds_a_circle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search itself: a planted circle a -> b -> c -> a is reported."""
    monkeypatch.setattr(
        sys.modules[__name__], "GRAPH", {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    )
    assert _cycle() == ["a", "b", "c", "a"]
