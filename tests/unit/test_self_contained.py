"""Nothing in the repository reads or names a folder beside the clone: a fresh clone is all a
user has. Every tracked text file is searched for a sibling `shared` folder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Written so that this file does not match itself.
OUTSIDE = [
    re.compile(r"\.\./" + "shared"),
    re.compile(r"/work/" + "shared"),
    # path building with pathlib (parent / NAME) or os.path.join("..", NAME)
    re.compile(r"/\s*[\"']" + r"shared[\"']"),
    re.compile(r"[\"']\.\.[\"']\s*,\s*[\"']" + r"shared[\"']"),
]


def tracked_files(root: Path) -> list[Path]:
    proc = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git ls-files failed in {root}: {proc.stderr}"
    return [root / name for name in proc.stdout.split("\0") if name]


def outside_references(root: Path, files: list[Path]) -> list[str]:
    """`path:line: text` for every line that points outside the repository."""
    found = []
    for path in files:
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (git's own test)
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_no_tracked_file_points_outside_the_repository() -> None:
    files = tracked_files(ROOT)
    assert len(files) > 100, "git ls-files listed almost nothing"
    assert outside_references(ROOT, files) == []


def test_the_search_finds_each_kind_of_reference(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    sibling = "shared"
    bad.write_text(
        "ok = 1\n"
        f'SCHEMAS = REPO.parent / "{sibling}" / "schemas"\n'
        f"see ../{sibling}/schemas/README.md\n"
        f"cp /work/{sibling}/x .\n"
        f'os.path.join(root, "..", "{sibling}")\n'
    )
    (tmp_path / "blob.bin").write_bytes(b"\0../" + sibling.encode())
    found = outside_references(tmp_path, [bad, tmp_path / "blob.bin"])
    assert [f.split(":")[:2] for f in found] == [["bad.py", str(n)] for n in (2, 3, 4, 5)]
