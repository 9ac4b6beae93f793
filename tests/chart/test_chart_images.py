"""Container images and scripts: Dockerfiles are multi-stage, pinned and non-root;
hack/*.sh pass shellcheck (Debian package `shellcheck`)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "operator": REPO / "operator" / "Dockerfile",
    "serving": REPO / "serving" / "Dockerfile",
}
SCRIPTS = sorted((REPO / "hack").glob("*.sh"))
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cmake", "git")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in instructions(path) if word == "ARG" and "=" in rest
    )


def base_images(path: Path) -> list[str]:
    defaults = arg_defaults(path)
    out = []
    for stage in stages(path):
        ref = stage[0][1].split()[0]
        out.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], ref))
    return out


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_with_pinned_bases(name: str) -> None:
    path = DOCKERFILES[name]
    bases = base_images(path)
    assert len(bases) >= 2, "a build stage and a runtime stage"
    for image in bases:
        _repo, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert tag and tag != "latest", f"{name}: base {image} is not pinned"
        assert re.search(r"\d", tag) or tag == "nonroot" or tag == "digest", image
    if name == "operator":
        # distroless's "nonroot" tag is versioned by the Debian release in the image name.
        assert bases[-1].startswith("gcr.io/distroless/python3-debian12")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_is_non_root_without_build_tools(name: str) -> None:
    final = stages(DOCKERFILES[name])[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, f"{name}: the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{name}: USER {users[-1]} is root or not numeric"
    runs = " ".join(rest for word, rest in final if word == "RUN")
    for tool in BUILD_TOOLS:
        assert not re.search(rf"\b(apt-get|apk|yum|dnf) [^&]*\b{re.escape(tool)}\b", runs), tool


def test_serving_image_matches_the_ray_and_torch_we_test_with() -> None:
    defaults = arg_defaults(DOCKERFILES["serving"])
    ray_image = defaults["RAY_IMAGE"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-cu(\d+)", ray_image)
    assert match, f"serving base must be a Ray CUDA image, got {ray_image}"
    assert match.group(1) == "2.60.0"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        assert match.group(1) == importlib.metadata.version("ray")
    assert defaults["TORCH_VERSION"] == "2.13.0"
    assert defaults["TORCH_INDEX"].endswith(f"/cu{match.group(2)}"), "torch CUDA build = Ray's CUDA"


def test_chart_default_user_matches_the_operator_image() -> None:
    import yaml

    values = yaml.safe_load((REPO / "charts/mmo/values.yaml").read_text())
    final = stages(DOCKERFILES["operator"])[-1]
    (user,) = [rest for word, rest in final if word == "USER"]
    assert int(user.split(":")[0]) == values["operator"]["runAsUser"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_pass_shellcheck(script: Path) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck not found: install the Debian package `shellcheck`")
    proc = subprocess.run(
        [exe, "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_build_images_script_builds_both_images(tmp_path: Path) -> None:
    """Run hack/build-images.sh with a fake docker that records its arguments."""
    log = tmp_path / "docker.log"
    fake = tmp_path / "docker"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    env = dict(os.environ, DOCKER=str(fake), REGISTRY="registry.test/mmo", TAG="9.9.9")
    proc = subprocess.run(
        [str(REPO / "hack" / "build-images.sh"), "--push"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["build", "push", "build", "push"]
    assert "--file " + str(REPO / "operator/Dockerfile") in calls[0]
    assert "--tag registry.test/mmo/mmo-operator:9.9.9" in calls[0]
    assert calls[3] == "push registry.test/mmo/mmo-serving:9.9.9"
    bad = subprocess.run(
        [str(REPO / "hack" / "build-images.sh"), "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert bad.returncode == 2 and "unknown argument: --bogus" in bad.stderr
