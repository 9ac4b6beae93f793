"""``mmo up FILE``: the operator's Serve application on a private local Ray.

The command line validates FILE and builds the AppArgs exactly as the operator does; this
module takes those AppArgs, applies the local overrides, then:

1. checks that the Serve and metrics ports are free (before Ray starts),
2. a private Ray (``include_dashboard=False``, logical GPUs = the spec's GPUs, the
   Prometheus metrics port fixed and printed),
3. Serve on ``--host:--port``, the app deployed with ``serve.run`` while progress is
   printed (engine vllm: on the CPU where torch sees no GPU, see
   :func:`engine_accelerator`),
4. the endpoint, the metrics URL and a ready-to-paste request,
5. on Ctrl-C or SIGTERM: ``serve.shutdown()`` then ``ray.shutdown()``: nothing is left
   running.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, TextIO

from mmo_serving.config import AUDIT_KEY_ENV, AppArgs
from mmo_serving.metrics import METRICS_REPORT_INTERVAL_MS
from mmo_serving.vllm_args import Accelerator

APP_NAME = "mmo"
DEFAULT_METRICS_PORT = 8080
SAMPLE_QUESTION = "what colour is the circle?"
SAMPLE_TEXT = "Name three colours."


@dataclass
class UpOptions:
    source: str = ""  # the spec file, for messages
    host: str = "127.0.0.1"
    port: int | None = None  # None: spec.serving.port
    metrics_port: int = DEFAULT_METRICS_PORT
    num_cpus: int | None = None  # None: max(4, cpu count)
    ca_bundle: str | None = None
    audit_file: str | None = None
    timeout_s: float = 900.0
    verbose: bool = False
    # engine vllm: what it runs on; auto = gpu where torch sees a CUDA device, else cpu
    accelerator: Literal["auto", "gpu", "cpu"] = "auto"


class UpError(Exception):
    """A problem that stops ``mmo up`` before anything starts (exit code 1)."""


def local_app_args(args: AppArgs, opts: UpOptions) -> AppArgs:
    """The operator's AppArgs with the local overrides (port, CA bundle, audit file)."""
    args = AppArgs.model_validate(args.model_dump())
    if opts.port is not None:
        args.port = opts.port
    if opts.ca_bundle is not None:
        if args.isolation.hybrid is None:
            raise UpError("--ca-bundle: only meaningful in hybrid mode (spec.isolation.hybrid)")
        if not os.path.isfile(opts.ca_bundle):
            raise UpError(f"--ca-bundle: {opts.ca_bundle}: no such file")
        args.isolation.hybrid.ca_bundle = os.path.abspath(opts.ca_bundle)
    if args.isolation.audit_enabled:
        # The replica's stdout ends in Ray's log files: a file the user can tail is better.
        path = opts.audit_file or os.path.join(
            tempfile.gettempdir(), f"mmo-up-{args.name}-audit.jsonl"
        )
        args.isolation.audit_path = os.path.abspath(path)
    return AppArgs.model_validate(args.model_dump())


def engine_accelerator(
    choice: str, cuda_available: Callable[[], bool] | None = None
) -> Accelerator:
    """What the vLLM engine runs on under ``mmo up``: ``--accelerator``, or for ``auto``
    a GPU when torch sees a CUDA device, the CPU otherwise. (Ray's logical GPUs, which
    ``mmo up`` always declares, say nothing about the hardware.)"""
    if choice in ("gpu", "cpu"):
        return "gpu" if choice == "gpu" else "cpu"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available
    return "gpu" if cuda_available() else "cpu"


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """UpError naming the port and the flag that changes it when ``host:port`` is taken.

    Bound the way the servers bind (SO_REUSEADDR), so a port only in TIME_WAIT is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UpError(
                f"port {port} ({what}) on {host or '0.0.0.0'} is not free "
                f"({exc.strerror or exc}): choose another with {flag}"
            ) from exc


def check_ports(args: AppArgs, opts: UpOptions) -> None:
    check_port_free(opts.host, args.port, "the Serve HTTP port", "--port PORT")
    # Ray's metrics agent listens on every interface.
    check_port_free("", opts.metrics_port, "Ray's metrics port", "--metrics-port PORT")


def is_multimodal_checkpoint(args: AppArgs) -> bool:
    """The spec takes images, or the local checkpoint has a vision tower."""
    if "image" in args.modalities:
        return True
    local = Path(args.model_source.removeprefix("file://")) / "config.json"
    try:
        return "vision_config" in json.loads(local.read_text())
    except (OSError, ValueError):
        return False


def check_vllm_can_load(
    args: AppArgs, has_module: Callable[[str], bool] = lambda m: find_spec(m) is not None
) -> None:
    """UpError before Ray starts when vLLM would fail inside the replica: its multimodal
    models import torchvision, which vLLM's CPU build on the package index lacks."""
    if args.engine != "vllm" or not is_multimodal_checkpoint(args):
        return
    if not has_module("torchvision"):
        raise UpError(
            f"engine vllm cannot load {args.name} here: vLLM's multimodal models "
            "import torchvision, which this Python cannot import (vLLM's CPU build has "
            "none on the package index). Serve it where vLLM's CUDA build is installed "
            "(a GPU machine), or install a torchvision built for this torch"
        )


def hybrid_key_warning(args: AppArgs, env: Mapping[str, str] = os.environ) -> str | None:
    """A warning when hybrid mode has no API key: every offload would fall back to local."""
    hybrid = args.isolation.hybrid
    if hybrid is None or env.get(hybrid.credentials_env):
        return None
    return (
        f"mmo up: warning: {hybrid.credentials_env} is not set: requests the gateway "
        "offloads to the cloud endpoint will fall back to local serving "
        f"(export {hybrid.credentials_env}=... before mmo up to offload)"
    )


def ensure_audit_key(env: MutableMapping[str, str]) -> str:
    """A random audit digest key for this run (kept when the user exported one); the
    replicas inherit it, so all of them key the trail alike."""
    return env.setdefault(AUDIT_KEY_ENV, secrets.token_hex(32))


def sample_image_data_url() -> str:
    """A 64x64 red circle on white: small enough to paste into a shell."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (255, 255, 255))
    ImageDraw.Draw(img).ellipse((14, 14, 50, 50), fill=(220, 20, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sample_request(args: AppArgs) -> dict[str, Any]:
    if "image" not in args.modalities:
        return {"model": args.name, "messages": [{"role": "user", "content": SAMPLE_TEXT}]}
    return {
        "model": args.name,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": SAMPLE_QUESTION},
                    {"type": "image_url", "image_url": {"url": sample_image_data_url()}},
                ],
            }
        ],
    }


def mmo_command(argv0: str | None = None, cwd: str | None = None) -> str:
    """How to run this CLI from the user's shell: the path it was started by (relative
    to the working directory when under it, e.g. ``.venv/bin/mmo``), since ``make up``
    does not put ``mmo`` on PATH."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(argv0) != "mmo":
        return "mmo"
    path = os.path.abspath(argv0)
    rel = os.path.relpath(path, cwd or os.getcwd())
    return path if rel.startswith("..") else rel


def banner(args: AppArgs, url: str, metrics_url: str) -> str:
    body = json.dumps(sample_request(args), separators=(",", ":"))
    if "image" in args.modalities:
        ask_args = f"--image PICTURE.png {shlex.quote(SAMPLE_QUESTION)}"
    else:
        ask_args = shlex.quote(SAMPLE_TEXT)
    curl = (
        f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d {shlex.quote(body)}"
    )
    return "\n".join(
        [
            "",
            f"mmo: {args.name} is serving ({args.num_gpus} expert-parallel rank(s), "
            f"isolation {args.isolation.mode})",
            f"  endpoint:  {url}/v1  (OpenAI-compatible: chat/completions, embeddings, models)",
            f"  health:    {url}/healthz   {url}/readyz   {url}/v1/expert-load",
            f"  metrics:   {metrics_url}  (Prometheus; series ray_mmo_*)",
            f"  audit:     {args.isolation.audit_path or 'off'}",
            "  try:",
            f"    {curl}",
            f"    {shlex.quote(mmo_command())} ask --url {url} {ask_args}",
            "  Ctrl-C stops everything.",
            "",
        ]
    )


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def _name(status: Any) -> str:
    return str(getattr(status, "value", status))


def _progress(out: TextIO, t0: float, last: list[str]) -> None:
    from ray import serve

    try:
        status = serve.status()
    except Exception:  # the controller may not be up yet
        return
    app = status.applications.get(APP_NAME)
    if app is None:
        line = "waiting for the Serve controller"
    else:
        parts = [f"application {_name(app.status)}"]
        for name, dep in app.deployments.items():
            counts = ", ".join(f"{n} {_name(s).lower()}" for s, n in dep.replica_states.items())
            parts.append(f"{name}: {_name(dep.status)} ({counts or 'no replicas yet'})")
        line = "; ".join(parts)
    now = time.monotonic()
    # a new state, or the same one again every 10 s so that a long start shows it is alive
    if not last or line != last[0] or now - float(last[1]) >= 10:
        out.write(f"[{now - t0:6.1f}s] {line}\n")
        out.flush()
        last[:] = [line, str(now)]


def run_up(app_args: AppArgs, opts: UpOptions, out: TextIO = sys.stdout) -> int:
    """Start, serve until Ctrl-C/SIGTERM, stop. Returns the exit code."""
    try:
        args = local_app_args(app_args, opts)
        warning = hybrid_key_warning(args)
        if warning:
            print(warning, file=sys.stderr)
        check_ports(args, opts)
        check_vllm_can_load(args)
    except UpError as exc:
        print(f"mmo up: {exc}", file=sys.stderr)
        return 1
    num_cpus = opts.num_cpus or max(4, os.cpu_count() or 1)
    accelerator = engine_accelerator(opts.accelerator) if args.engine == "vllm" else "gpu"
    url = f"http://{opts.host}:{args.port}"
    metrics_url = f"http://127.0.0.1:{opts.metrics_port}/metrics"
    out.write(
        f"mmo up: {opts.source} valid; plan: {args.num_gpus} GPU(s), balancedness "
        f"{args.placement.balancedness if args.placement else 1.0:.3f}\n"
        f"mmo up: starting a private Ray ({num_cpus} CPUs, {args.num_gpus} logical GPUs)\n"
    )
    if args.engine == "vllm":
        out.write(f"mmo up: engine vllm on the {accelerator.upper()} ({args.model_source})\n")
    out.flush()
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    # Quiet Ray's start-up: the logical GPUs are what we want (see ray_cluster fixture).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ensure_audit_key(os.environ)
    import ray
    from ray import serve

    from mmo_serving.app import build_app

    if not opts.verbose:
        # Serve warns that serve.run's default HTTP options differ from ours (ignored).
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
        logging.getLogger("ray").setLevel(logging.WARNING)

    code = 0
    try:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=args.num_gpus,
            include_dashboard=False,
            namespace="mmo-up",
            log_to_driver=opts.verbose,
            _metrics_export_port=opts.metrics_port,
            _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
            configure_logging=opts.verbose,
        )
        # Ray may install its own handlers: ours decide how we stop.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _raise_stop)
        serve.start(http_options={"host": opts.host, "port": args.port})
        app = build_app(args, accelerator=accelerator)
        code = _deploy_and_wait(app, args, opts, out, url, metrics_url)
    except (_Stop, KeyboardInterrupt):
        out.write("\nmmo up: stopping\n")
    except Exception as exc:
        print(f"mmo up: failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        out.write("mmo up: stopped\n")
        out.flush()
    return code


def _deploy_and_wait(
    app: Any, args: AppArgs, opts: UpOptions, out: TextIO, url: str, metrics_url: str
) -> int:
    """``serve.run`` in the main thread (Ctrl-C interrupts it); a helper thread prints
    progress and interrupts the main thread when the readiness timeout passes."""
    import _thread

    from ray import serve

    t0 = time.monotonic()
    stop = threading.Event()
    timed_out = threading.Event()
    last: list[str] = []

    def poll() -> None:
        while not stop.wait(1.0):
            _progress(out, t0, last)
            if time.monotonic() - t0 > opts.timeout_s:
                timed_out.set()
                _thread.interrupt_main()
                return

    poller = threading.Thread(target=poll, name="mmo-up-progress", daemon=True)
    poller.start()
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except KeyboardInterrupt:
        if timed_out.is_set():
            print(f"mmo up: not ready after {opts.timeout_s:.0f}s", file=sys.stderr)
            return 1
        raise
    finally:
        stop.set()
        poller.join()
    _progress(out, t0, last)
    out.write(banner(args, url, metrics_url))
    out.flush()
    while True:
        time.sleep(3600)
