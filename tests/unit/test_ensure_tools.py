"""hack/ensure-tools.sh (run by `make test`): installs missing Debian packages when apt-get is
usable, else stops with one line naming the commands and packages. Run here with a PATH of
fake commands only, so the machine's own tools and apt-get are out of reach."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "ensure-tools.sh"
BASH = "/bin/bash"
CHMOD = "/bin/chmod"  # by absolute path: the PATH holds only the fakes
TOOLS = ("promtool", "prometheus", "shellcheck", "openssl", "kubectl")


def fake(bin_dir: Path, name: str, body: str = "exit 0") -> None:
    path = bin_dir / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


def run(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(SCRIPT)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_all_tools_present_is_silent(tmp_path: Path) -> None:
    for tool in TOOLS:
        fake(tmp_path, tool)
    proc = run(tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_without_apt_get_one_line_names_command_and_package(tmp_path: Path) -> None:
    for tool in ("prometheus", "openssl", "kubectl"):
        fake(tmp_path, tool)
    proc = run(tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "ensure-tools: promtool shellcheck not found and apt-get is not usable here (needs root"
        " or passwordless sudo): install the Debian package(s) prometheus shellcheck"
        " (sudo apt-get install prometheus shellcheck)"
    ]


def test_missing_kubectl_says_where_to_get_it(tmp_path: Path) -> None:
    for tool in TOOLS[:-1]:
        fake(tmp_path, tool)
    proc = run(tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "ensure-tools: kubectl not found: install it from"
        " https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ (no current Debian package)"
    ]


def apt_that_installs(bin_dir: Path, log: Path, works: bool = True) -> None:
    """A fake apt-get (behind a fake sudo when not root) that logs and creates the tools."""
    creates = "".join(
        f'printf "#!{BASH}\\nexit 0\\n" > {bin_dir}/{t}; {CHMOD} 755 {bin_dir}/{t}; '
        for t in ("promtool", "prometheus", "shellcheck")
    )
    install = creates if works else "exit 100"
    fake(
        bin_dir,
        "apt-get",
        f'echo "$*" >> {log}\nif [ "$1" = install ]; then {install}\nfi',
    )
    fake(bin_dir, "sudo", '[ "$1" = -n ] && shift\n"$@"')


def test_with_apt_get_the_missing_packages_are_installed(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    for tool in ("openssl", "kubectl"):
        fake(bin_dir, tool)
    apt_that_installs(bin_dir, log)
    proc = run(bin_dir)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert log.read_text().splitlines() == [
        "update -qq",
        "install -y -qq --no-install-recommends prometheus shellcheck",
    ]
    assert proc.stdout.splitlines() == [
        "ensure-tools: installing Debian package(s) prometheus shellcheck"
        " for promtool prometheus shellcheck"
    ]


def test_a_failed_install_stops_with_one_line(tmp_path: Path) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    for tool in ("promtool", "prometheus", "openssl", "kubectl"):
        fake(bin_dir, tool)
    apt_that_installs(bin_dir, log, works=False)
    proc = run(bin_dir)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "ensure-tools: apt-get could not install shellcheck: install them yourself"
        " (sudo apt-get install shellcheck)"
    ]


def test_make_test_ensures_the_tools_before_pytest() -> None:
    proc = subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    lines = proc.stdout.splitlines()
    tools = lines.index("hack/ensure-tools.sh")
    pytest_at = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert tools < pytest_at, proc.stdout


def test_ci_only_runs_make_test() -> None:
    commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert commands == ['make test PYTEST_ARGS="${PYTEST_ARGS:--q}"']
