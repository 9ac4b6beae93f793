"""``python -m mmo_serving.federated``: the Flower app, its signed bundle, a local federation.

python -m mmo_serving.federated app DIR [-c key=value ...]
    writes DIR/pyproject.toml, the app project
python -m mmo_serving.federated keygen DIR
    a new signing key: DIR/signing-key (private, 0600) and DIR/trusted-entities.yaml
    (public: what the sites' SuperNodes trust)
python -m mmo_serving.federated sign REGISTRY --key KEY [-c key=value ...]
    builds the app's bundle, signs it with KEY, publishes it in the registry directory
python -m mmo_serving.federated registry REGISTRY [--host H] [--port P]
    serves the registry to the SuperLink (its FLWR_SUPERGRID_API_URL: http://H:P/v1);
    then ``flwr run @mmo/mmo-federated==0.1.0 <superlink> -c 'key=value ...'``
python -m mmo_serving.federated local WORKDIR [--sites 3] [-c key=value ...]
    SuperLink + SuperNodes on loopback, one run of the signed bundle, results in
    WORKDIR/out (--signing-key KEY: sign with KEY instead of a key made in
    WORKDIR/trust; -c secure-aggregation=true: SecAgg+; --keep-updates,
    --drop SITE:ROUND:WHEN to check it)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mmo_serving.federated import registry, trust
from mmo_serving.federated.bundle import DEFAULT_RUN_CONFIG, sign_and_publish, write_app
from mmo_serving.federated.loopback import run_local
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
    kg = sub.add_parser("keygen", help="make a signing key and the trust file naming it")
    kg.add_argument("dir", type=Path)
    sg = sub.add_parser("sign", help="build, sign and publish the app's bundle")
    sg.add_argument("registry", type=Path)
    sg.add_argument("--key", type=Path, required=True, help="OpenSSH Ed25519 private key")
    sg.add_argument("-c", "--config", action="append", default=[])
    rg = sub.add_parser("registry", help="serve a registry directory to the SuperLink")
    rg.add_argument("registry", type=Path)
    rg.add_argument("--host", default="127.0.0.1")
    rg.add_argument("--port", type=int, default=9080)
    loc = sub.add_parser("local", help="run a local federation on loopback")
    loc.add_argument("work", type=Path)
    loc.add_argument("--sites", type=int, default=3)
    loc.add_argument("--timeout", type=float, default=600)
    loc.add_argument("-c", "--config", action="append", default=[])
    loc.add_argument("--keep-updates", action="store_true", help="sites keep each update they sent")
    loc.add_argument("--signing-key", type=Path, help="sign the bundle with this key")
    loc.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="SITE:ROUND:WHEN",
        help=f"(secure rounds) SITE fails in ROUND, WHEN one of {', '.join(DROP_POINTS)}",
    )
    args = p.parse_args(argv)
    cfg = _parse_kv(getattr(args, "config", []))
    if args.cmd == "app":
        print(write_app(args.dir, cfg) / "pyproject.toml")
        return 0
    if args.cmd == "keygen":
        try:
            key, trusted = trust.generate_key(args.dir)
        except FileExistsError as e:
            raise SystemExit(str(e)) from None
        print(json.dumps({"signing_key": str(key), "trusted_entities": str(trusted)}))
        return 0
    if args.cmd == "sign":
        try:
            spec = sign_and_publish(args.registry, args.key, cfg)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        print(spec)
        return 0
    if args.cmd == "registry":
        srv = registry.server(args.registry, args.host, args.port)
        print(f"FLWR_SUPERGRID_API_URL={registry.api_url(srv)}", flush=True)
        srv.serve_forever()
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
        signing_key=args.signing_key,
    )
    print(json.dumps({k: v for k, v in res.items() if k not in ("stdout", "stderr")}))
    if res["returncode"] != 0 or not res["done"]:
        sys.stderr.write(res["stdout"] + res["stderr"])
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
