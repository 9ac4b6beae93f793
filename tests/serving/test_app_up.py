"""``mmo up`` as a subprocess: starts, serves a chat with a picture, stops on SIGINT
leaving no process behind (every descendant seen while it ran is gone)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from mmo_serving.up_runner import mmo_command
from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "manifests/samples/private-vqa.yaml"
MMO = Path(sys.executable).with_name("mmo")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _descendants(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _builtin_available() -> bool:
    """The checkpoint files are installed (where the model package reads them)."""
    from mmo_serving.model.checkpoint import resolve_source

    return (resolve_source("builtin://shapes-moe") / "config.json").is_file()


@pytest.fixture()
def small_spec(tmp_path: Path) -> Path:
    """The make-up sample on 2 GPUs (8 ranks would crowd a 2-core test machine)."""
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["spec"]["resources"]["gpusPerNode"] = 2
    doc["spec"]["experts"]["redundantExperts"] = 0
    out = tmp_path / "vqa-2gpu.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def test_app_mmo_up_serves_and_stops_cleanly(small_spec: Path) -> None:
    assert _builtin_available(), "builtin://shapes-moe missing from serving/mmo_serving/assets"
    from mmo_operator.api.builtin import assets_dir, available_builtins

    # mmo up validates with the operator's own code: it must see the installed checkpoint
    assert "shapes-moe" in available_builtins(), f"operator looks in {assets_dir()}"
    from mmo_serving.up_runner import sample_request

    port, metrics_port = free_port(), free_port()
    cmd = [
        str(MMO), "up", str(small_spec), "--port", str(port),
        "--metrics-port", str(metrics_port), "--num-cpus", "4", "--timeout", "300",
        "--audit-file", str(small_spec.with_name("audit.jsonl")),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=ROOT,
    )
    seen: set[int] = set()
    out_lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out_lines.append(line)
            seen |= _descendants(proc.pid)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(out_lines)
        assert "Ctrl-C stops everything" in output, output
        assert re.search(r"\[\s*\d+\.\d+s\] application", output), output  # progress lines
        assert f"endpoint:  http://127.0.0.1:{port}/v1" in output
        assert f"metrics:   http://127.0.0.1:{metrics_port}/metrics" in output
        assert "curl -s" in output and "data:image/png;base64," in output
        audit = Path(re.search(r"audit:\s+(\S+)", output).group(1))  # type: ignore[union-attr]
        seen |= _descendants(proc.pid)
        assert len(seen) >= 3  # Ray's processes were started below mmo up

        from mmo_operator.cli.up import up_app_args

        args = up_app_args(str(small_spec))
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=sample_request(args),
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].strip() == "red"

        # mmo ask with a picture file, and its error path
        import base64

        picture = small_spec.with_name("circle.png")
        picture.write_bytes(base64.b64decode(sample_request(args)["messages"][0]["content"][1][
            "image_url"]["url"].split(",", 1)[1]))  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        ask = [str(MMO), "ask", "--url", url, "--image", str(picture), "what colour is the circle?"]
        done = subprocess.run(ask, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout.strip()) == (0, "red"), done.stderr
        lines = audit.read_text().splitlines()  # the gateway audited both requests
        assert len(lines) >= 2 and "circle" not in audit.read_text()
        # a question outside the built-in model's task: the fixed sentence, "stop"
        import json

        from mmo_serving.model.scope import REFUSAL

        done = subprocess.run(
            [*ask[:4], "--json", "hello, who are you?"], capture_output=True, text=True, timeout=120
        )
        choice = json.loads(done.stdout)["choices"][0]
        assert (choice["message"]["content"], choice["finish_reason"]) == (REFUSAL, "stop")
        # the banner's mmo ask line is pasteable: the path this mmo was started by
        # (relative to the working directory when under it, as `make up` prints it)
        shown = mmo_command(str(MMO), str(ROOT))
        assert f"{shown} ask --url {url} --image PICTURE.png" in output
        done = subprocess.run(
            [*ask[:4], "--model", "nope", "hi"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1 and "model 'nope' does not exist" in done.stderr
        seen |= _descendants(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        out_lines.append(rest or "")
    output = "".join(out_lines)
    assert proc.returncode == 0, output
    assert "mmo up: stopped" in output
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in seen):
        time.sleep(0.5)
    left = sorted(p for p in seen if _alive(p))
    assert not left, f"processes left behind: {left}\n{output}"


def test_app_mmo_up_rejects_an_invalid_spec(tmp_path: Path) -> None:
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["spec"]["batching"]["maxBatchSize"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = subprocess.run(
        [str(MMO), "up", str(bad)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 1
    assert "spec.batching.maxBatchSize" in r.stderr, r.stderr
    assert "starting a private Ray" not in r.stdout
