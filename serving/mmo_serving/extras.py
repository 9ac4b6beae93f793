"""Which third-party packages of the ``serving`` extra a command needs, and the one line
to print when some are missing (a core-only install: ``pip install mmo``)."""

from __future__ import annotations

import importlib.util
import sys

UP_NEEDS = ("ray", "torch", "httpx", "PIL")
ASK_NEEDS = ("httpx", "PIL")
INSTALL_HINT = "install the serving extra: pip install 'mmo[serving]'"


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: an import that is known to fail
    return importlib.util.find_spec(module) is not None


def missing_serving_extra(command: str, modules: tuple[str, ...]) -> str | None:
    """None when every module can be imported; else the message naming the missing ones."""
    missing = [m for m in modules if not _installed(m)]
    if not missing:
        return None
    names = ", ".join("pillow" if m == "PIL" else m for m in missing)
    return f"mmo {command}: needs {names}, not installed: {INSTALL_HINT}"
