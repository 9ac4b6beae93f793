"""``mmo ask`` (registered by ``mmo_operator.cli``; ``mmo up`` is
``mmo_operator.cli.up``, which validates the spec and hands AppArgs to
:mod:`mmo_serving.up_runner`).

Importing this module is light: httpx and Pillow load inside the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, get_args

from mmo_serving.config import DataClass
from mmo_serving.extras import ASK_NEEDS, missing_serving_extra

DEFAULT_URL = "http://127.0.0.1:8000"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ask",
        help="ask a running endpoint a question, optionally about a picture",
        description="Send one chat completion request to a running mmo endpoint.",
    )
    p.add_argument("question", help="the question, e.g. 'what colour is the circle?'")
    p.add_argument(
        "--url",
        default=os.environ.get("MMO_URL", DEFAULT_URL),
        help="endpoint base URL (default: $MMO_URL or %(default)s)",
    )
    p.add_argument("--image", metavar="FILE", help="a picture (PNG, JPEG, WebP, ...)")
    p.add_argument("--model", help="model name (default: the endpoint's first model)")
    p.add_argument("--max-tokens", type=int, help="limit on generated tokens")
    p.add_argument("--stream", action="store_true", help="stream the answer as it is sent")
    p.add_argument("--data-class", choices=get_args(DataClass))
    p.add_argument("--tenant", help="X-Tenant header")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the whole JSON response")
    p.set_defaults(func=cmd_ask)


def _error_text(resp: Any) -> str:
    try:
        err = resp.json()["error"]
        return f"{err.get('message')} (HTTP {resp.status_code}, {err.get('code')})"
    except Exception:
        return f"HTTP {resp.status_code}: {resp.text[:500]}"


def cmd_ask(args: argparse.Namespace) -> int:
    missing = missing_serving_extra("ask", ASK_NEEDS)
    if missing:
        print(missing, file=sys.stderr)
        return 1
    import httpx

    url = args.url.rstrip("/")
    headers = {}
    if args.data_class:
        headers["X-Data-Class"] = args.data_class
    if args.tenant:
        headers["X-Tenant"] = args.tenant
    content: list[dict[str, Any]] = [{"type": "text", "text": args.question}]
    if args.image:
        from mmo_serving.images import file_to_data_url

        try:
            content.append(
                {"type": "image_url", "image_url": {"url": file_to_data_url(args.image)}}
            )
        except (OSError, ValueError) as exc:
            print(f"mmo ask: {exc}", file=sys.stderr)
            return 1
    try:
        with httpx.Client(base_url=url, timeout=args.timeout) as client:
            model = args.model
            if model is None:
                r = client.get("/v1/models")
                if r.status_code != 200:
                    print(f"mmo ask: {url}/v1/models: {_error_text(r)}", file=sys.stderr)
                    return 1
                model = r.json()["data"][0]["id"]
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": content}],
            }
            if args.max_tokens:
                body["max_tokens"] = args.max_tokens
            if args.stream:
                return _stream(client, body, headers)
            r = client.post("/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as exc:
        print(f"mmo ask: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"mmo ask: {_error_text(r)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(r.json(), indent=2))
    else:
        print(r.json()["choices"][0]["message"]["content"])
    return 0


def _stream(client: Any, body: dict[str, Any], headers: dict[str, str]) -> int:
    body = {**body, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            print(f"mmo ask: {_error_text(r)}", file=sys.stderr)
            return 1
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            sys.stdout.write(delta)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
