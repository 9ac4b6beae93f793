"""checkov passes on the rendered chart, except the listed, justified skips.

checkov's pins clash with the main venv, so it runs from `.venv-checkov` (created here, or by
`make checkov-venv`, from PyPI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHECKOV_VENV = REPO / ".venv-checkov"
CHECKOV_PIN = "checkov==3.3.30"
SKIPS_FILE = REPO / "charts" / "mmo" / "checkov-skips.yaml"


def checkov_bin() -> Path:
    exe = CHECKOV_VENV / "bin" / "checkov"
    if exe.exists():
        return exe
    try:
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True, timeout=300)
        subprocess.run(
            [str(CHECKOV_VENV / "bin" / "pip"), "install", "--quiet", CHECKOV_PIN],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.fail(f"could not install {CHECKOV_PIN} into {CHECKOV_VENV} (PyPI needed): {exc}")
    return exe


@pytest.fixture
def rendered_dir(
    tmp_path: Path,
    render: Any,
    values_all_on: dict[str, Any],
    values_user_tls: dict[str, Any],
    values_namespaced: dict[str, Any],
) -> Path:
    out = tmp_path
    variants = {
        "defaults": None,
        "all-on": values_all_on,
        "user-tls": values_user_tls,
        "namespaced": values_namespaced,
    }
    for name, values in variants.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(render(values)))
    return out


def run_checkov(directory: Path) -> dict[str, Any]:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
    proc = subprocess.run(
        [
            str(checkov_bin()),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.stdout.strip(), f"checkov printed nothing: {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.slow
def test_checkov_passes_except_justified_skips(rendered_dir: Path) -> None:
    skips: dict[str, str] = yaml.safe_load(SKIPS_FILE.read_text())
    for check, reason in skips.items():
        assert len(reason.split()) >= 10, f"{check}: the reason must say why"
    report = run_checkov(rendered_dir)
    results = report.get("results", {})
    failed = results.get("failed_checks", [])
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 100, (
        "checkov ran almost no checks: is the rendered chart empty?"
    )
    unexpected = sorted(
        {
            f"{f['check_id']} {f['resource']} ({f['file_path']})"
            for f in failed
            if f["check_id"] not in skips
        }
    )
    assert unexpected == [], "checkov failures that are neither fixed nor justified"
    # Every skip is still needed: a check that no longer fails must leave the list.
    stale = sorted(set(skips) - {f["check_id"] for f in failed})
    assert stale == [], f"skips no longer needed: {stale}"
