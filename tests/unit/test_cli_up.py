"""`mmo up` / `mmo ask` errors that stop before Ray starts or a request is sent: ports
taken, a core-only install, a file that is not a picture, hybrid mode without a key; and
the commands the banner prints."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmo_operator.cli import main
from mmo_operator.cli.up import up_app_args
from mmo_serving.up_runner import (
    UpOptions,
    banner,
    ensure_audit_key,
    hybrid_key_warning,
    mmo_command,
    run_up,
)
from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = str(ROOT / "manifests/samples/private-vqa.yaml")
HYBRID = str(ROOT / "manifests/samples/hybrid-vqa.yaml")
INSTALL = "install the serving extra: pip install 'mmo[serving]'"


@pytest.fixture()
def listening() -> Iterator[int]:
    """A port some other program holds (listening on every interface)."""
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _fail_if_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` would raise


def test_serve_port_taken_names_the_port_and_flag(
    listening: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_if_ray_starts(monkeypatch)
    opts = UpOptions(source=PRIVATE, port=listening, metrics_port=free_port())
    assert run_up(up_app_args(PRIVATE), opts) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"mmo up: port {listening} (the Serve HTTP port) on 127.0.0.1 is not free "
        "(Address already in use): choose another with --port PORT"
    )


def test_metrics_port_taken_names_the_port_and_flag(
    listening: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_if_ray_starts(monkeypatch)
    opts = UpOptions(source=PRIVATE, port=free_port(), metrics_port=listening)
    assert run_up(up_app_args(PRIVATE), opts) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"port {listening} (Ray's metrics port)" in err
    assert err.endswith("choose another with --metrics-port PORT")


@pytest.mark.parametrize("missing", ["ray", "torch", "httpx", "PIL"])
def test_up_on_a_core_install_says_which_extra(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    assert main(["up", PRIVATE]) == 1
    err = capsys.readouterr().err.strip()
    shown = "pillow" if missing == "PIL" else missing
    assert err == f"mmo up: needs {shown}, not installed: {INSTALL}"


def test_ask_on_a_core_install_says_which_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert main(["ask", "what colour is the circle?"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"mmo ask: needs httpx, pillow, not installed: {INSTALL}"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "an empty file"), (b"hello, not a picture", "not in an image format Pillow reads")],
)
def test_ask_image_that_is_not_a_picture(
    content: bytes, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "notes.png"
    picture.write_bytes(content)
    url = f"http://127.0.0.1:{free_port()}"  # never reached
    assert main(["ask", "--url", url, "--image", str(picture), "what colour?"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mmo ask: {picture}: not an image ({reason};"), err
    assert "BytesIO" not in err


def test_hybrid_without_api_key_warns_at_start(
    listening: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_if_ray_starts(monkeypatch)
    monkeypatch.delenv("MMO_CLOUD_API_KEY", raising=False)
    args = up_app_args(HYBRID)
    notes = capsys.readouterr().err.splitlines()  # admission's note on the DNS endpoint
    assert notes and all(line.startswith("mmo up: warning: hybrid endpoint") for line in notes)
    # the port check stops it right after the warning: no Ray is needed to see it
    assert run_up(args, UpOptions(source=HYBRID, port=listening)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "mmo up: warning: MMO_CLOUD_API_KEY is not set: requests the gateway offloads to "
        "the cloud endpoint will fall back to local serving "
        "(export MMO_CLOUD_API_KEY=... before mmo up to offload)"
    )
    assert hybrid_key_warning(args, {"MMO_CLOUD_API_KEY": "k"}) is None
    assert hybrid_key_warning(up_app_args(PRIVATE), {}) is None


def test_up_rejects_an_invalid_spec_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(PRIVATE).read_text().replace("maxBatchSize: ", "maxBatchSize: -"))
    assert main(["up", str(bad)]) == 1
    assert "spec.batching.maxBatchSize" in capsys.readouterr().err


def test_banner_commands_can_be_pasted(tmp_path: Path) -> None:
    assert mmo_command(str(tmp_path / ".venv/bin/mmo"), cwd=str(tmp_path)) == ".venv/bin/mmo"
    assert mmo_command("/opt/tools/bin/mmo", cwd=str(tmp_path)) == "/opt/tools/bin/mmo"
    assert mmo_command("/usr/lib/python3/pytest", cwd=str(tmp_path)) == "mmo"
    text = banner(up_app_args(PRIVATE), "http://127.0.0.1:8000", "http://127.0.0.1:8080/metrics")
    ask = next(line.strip() for line in text.splitlines() if " ask " in line)
    assert ask.endswith(
        "ask --url http://127.0.0.1:8000 --image PICTURE.png 'what colour is the circle?'"
    )


def test_up_makes_a_random_audit_key_per_run_unless_one_is_exported() -> None:
    first: dict[str, str] = {}
    second: dict[str, str] = {}
    key = ensure_audit_key(first)
    assert first == {"MMO_AUDIT_KEY": key} and len(key) == 64
    assert ensure_audit_key(second) != key  # another run, another key
    assert ensure_audit_key({"MMO_AUDIT_KEY": "mine"}) == "mine"


def test_up_accelerator_of_the_vllm_engine() -> None:
    from mmo_serving.up_runner import engine_accelerator

    assert engine_accelerator("cpu", lambda: True) == "cpu"
    assert engine_accelerator("gpu", lambda: False) == "gpu"
    assert engine_accelerator("auto", lambda: True) == "gpu"
    assert engine_accelerator("auto", lambda: False) == "cpu"


def _local_checkpoint_spec(tmp_path: Path, source: str) -> Path:
    text = (ROOT / "manifests/samples/deepseek-v3-int4.yaml").read_text()
    spec = tmp_path / "local.yaml"
    spec.write_text(text.replace("pvc://model-store/deepseek-v3-awq", source))
    return spec


def test_up_serves_a_local_checkpoint_that_a_cluster_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmo_serving.vllm_args import llm_config

    spec = _local_checkpoint_spec(tmp_path, f"file://{tmp_path}/ckpt")
    args = up_app_args(str(spec))
    assert args.engine == "vllm" and args.model_source == f"file://{tmp_path}/ckpt"
    config = llm_config(args, accelerator="cpu")
    assert config["model_loading_config"]["model_source"] == f"{tmp_path}/ckpt"
    assert config["accelerator_config"] == {"kind": "cpu"}
    # what the operator's admission (and `mmo validate`) says of the same file
    assert main(["validate", str(spec)]) != 0
    err = capsys.readouterr()
    assert "spec.model.source" in err.out + err.err
    assert "serves only with `mmo up`" in err.out + err.err


def test_banner_of_a_text_model_asks_without_an_image(tmp_path: Path) -> None:
    args = up_app_args(str(_local_checkpoint_spec(tmp_path, f"file://{tmp_path}/ckpt")))
    text = banner(args, "http://127.0.0.1:8000", "http://127.0.0.1:8080/metrics")
    ask = next(line.strip() for line in text.splitlines() if " ask " in line)
    assert ask.endswith("ask --url http://127.0.0.1:8000 'Name three colours.'")
    assert "image_url" not in text


def _local_vl_spec(tmp_path: Path, modalities: str = "[text, image]") -> Path:
    text = (ROOT / "manifests/samples/qwen3-vl-30b-a3b.yaml").read_text()
    text = text.replace("pvc://model-store/qwen3-vl-30b-a3b-instruct", f"file://{tmp_path}")
    spec = tmp_path / "local-vl.yaml"
    spec.write_text(text.replace("modalities: [text, image]", f"modalities: {modalities}"))
    return spec


def test_up_refuses_a_multimodal_vllm_model_without_torchvision_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_if_ray_starts(monkeypatch)
    monkeypatch.setattr("mmo_serving.up_runner.find_spec", lambda name: None)
    spec = str(_local_vl_spec(tmp_path))
    opts = UpOptions(source=spec, port=free_port(), metrics_port=free_port())
    assert run_up(up_app_args(spec), opts) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "mmo up: engine vllm cannot load qwen3-vl-30b-a3b here: vLLM's multimodal models "
        "import torchvision, which this Python cannot import"
    )
    assert err.endswith("or install a torchvision built for this torch")


def test_up_knows_a_multimodal_checkpoint_by_its_vision_tower(tmp_path: Path) -> None:
    from mmo_serving.up_runner import UpError, check_vllm_can_load

    def without(name: str) -> bool:
        return name != "torchvision"

    text_only = up_app_args(str(_local_vl_spec(tmp_path, "[text]")))
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_moe"}')
    check_vllm_can_load(text_only, without)  # a text checkpoint needs no torchvision
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_vl_moe", "vision_config": {}}')
    with pytest.raises(UpError, match=r"^engine vllm cannot load qwen3-vl-30b-a3b here"):
        check_vllm_can_load(text_only, without)
    check_vllm_can_load(text_only, lambda name: True)  # torchvision present
    check_vllm_can_load(up_app_args(PRIVATE), without)  # the built-in engine
