"""``python -m mmo_serving.federated``: write the Flower app, or run a local federation.

python -m mmo_serving.federated app DIR [-c key=value ...]
    writes DIR/pyproject.toml (then ``flwr run DIR <superlink>`` on the aggregator)
python -m mmo_serving.federated local WORKDIR [--sites 3] [-c key=value ...]
    SuperLink + SuperNodes on loopback, one run, results in WORKDIR/out
    (-c secure-aggregation=true: SecAgg+; --keep-updates, --drop SITE:ROUND:WHEN to
    check it)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmo_serving.federated.loopback import DEFAULT_RUN_CONFIG, run_local, write_app
from mmo_serving.federated.secure import DROP_POINTS


def _parse_kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in DEFAULT_RUN_CONFIG:
            raise SystemExit(
                f"bad -c {item!r}: expected KEY=VALUE with KEY in {sorted(DEFAULT_RUN_CONFIG)}"
            )
        default = DEFAULT_RUN_CONFIG[key]
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false"):
                raise SystemExit(f"bad -c {item!r}: {key} takes true or false")
            out[key] = raw.lower() == "true"
            continue
        try:
            out[key] = type(default)(raw) if not isinstance(default, str) else raw
        except ValueError:
            raise SystemExit(f"bad -c {item!r}: {key} takes a {type(default).__name__}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmo_serving.federated")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("app", help="write the Flower app project")
    a.add_argument("dir", type=Path)
    a.add_argument("-c", "--config", action="append", default=[])
    loc = sub.add_parser("local", help="run a local federation on loopback")
    loc.add_argument("work", type=Path)
    loc.add_argument("--sites", type=int, default=3)
    loc.add_argument("--timeout", type=float, default=600)
    loc.add_argument("-c", "--config", action="append", default=[])
    loc.add_argument("--keep-updates", action="store_true", help="sites keep each update they sent")
    loc.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="SITE:ROUND:WHEN",
        help=f"(secure rounds) SITE fails in ROUND, WHEN one of {', '.join(DROP_POINTS)}",
    )
    args = p.parse_args(argv)
    cfg = _parse_kv(args.config)
    if args.cmd == "app":
        print(write_app(args.dir, cfg) / "pyproject.toml")
        return 0
    drop_at: dict[int, list[str]] = {}
    for spec in args.drop:
        site, _, at = spec.partition(":")
        rnd, _, when = at.partition(":")
        if not (site.isdigit() and int(site) < args.sites and rnd.isdigit()) or (
            when not in DROP_POINTS
        ):
            raise SystemExit(
                f"bad --drop {spec!r}: expected SITE:ROUND:WHEN with SITE < --sites and WHEN "
                f"one of {', '.join(DROP_POINTS)}"
            )
        drop_at.setdefault(int(site), []).append(f"{int(rnd)}:{when}")
    drops = {s: {"drop-at": ",".join(d)} for s, d in drop_at.items()}
    node_extra = {"keep-updates": True} if args.keep_updates else {}
    res = run_local(
        args.work,
        cfg,
        sites=args.sites,
        timeout=args.timeout,
        node_extra=node_extra,
        site_extra=drops,
    )
    print(json.dumps({k: v for k, v in res.items() if k not in ("stdout", "stderr")}))
    if res["returncode"] != 0 or not res["done"]:
        sys.stderr.write(res["stdout"] + res["stderr"])
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
