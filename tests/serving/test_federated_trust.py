"""Sites run only the project's signed ClientApp (Flower 1.42's trusted entities).

- keys, records and the registry (this venv, milliseconds);
- Flower's own SuperNode checks (``--trusted-entities`` reader, ``_verify_fab``) applied
  to what mmo writes: the project's record verifies, another key's record, the record of
  another bundle and no record do not (Flower venv, no federation: seconds);
- one SuperLink and one SuperNode that trusts only the project's key, fed from the
  project's registry (``federated_trust_runs.py``, Flower venv): the project's signed
  bundle runs a round; an unsigned bundle (``flwr run DIR``), one signed by another key
  and one carrying the project's signature of another bundle are answered with an error,
  and their ClientApp code never runs (about 2-3 minutes on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mmo_serving.federated import registry, trust
from mmo_serving.federated.__main__ import main as federated_main
from mmo_serving.federated.bundle import APP_ID
from mmo_serving.federated.loopback import local_trust

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(__file__).with_name("federated_trust_runs.py")
REFUSED = ("unsigned", "foreign-key", "copied-signature")


# -- keys, records and the registry ------------------------------------------------------


def test_keygen_writes_a_private_key_and_the_trust_file(tmp_path: Path) -> None:
    key_path, trust_path = trust.generate_key(tmp_path)
    assert key_path.stat().st_mode & 0o777 == 0o600
    key = trust.load_key(key_path)
    kid = trust.key_id(key.public_key())
    assert trust_path.read_text() == f'{kid}: "{trust.openssh_public(key.public_key())}"\n'
    assert trust.openssh_public(key.public_key()).startswith("ssh-ed25519 AAAA")
    with pytest.raises(FileExistsError, match="refusing to replace a signing key"):
        trust.generate_key(tmp_path)
    with pytest.raises(SystemExit, match="refusing to replace a signing key"):
        federated_main(["keygen", str(tmp_path)])


def test_a_record_is_an_ed25519_signature_of_time_and_digest(tmp_path: Path) -> None:
    key = trust.load_key(trust.generate_key(tmp_path)[0])
    rec = trust.sign_fab(b"bundle", key, signed_at=1700000000)
    assert rec["public_key_id"] == trust.key_id(key.public_key())
    assert rec["signed_at"] == 1700000000 and "=" not in rec["signature"]
    import base64

    sig = base64.urlsafe_b64decode(rec["signature"] + "==")
    key.public_key().verify(sig, trust.signed_message(b"bundle", 1700000000))
    assert trust.signed_message(b"bundle", 1)[:8] == (1).to_bytes(8, "big")


def test_signing_keys_flower_cannot_verify_are_refused(tmp_path: Path) -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    (tmp_path / "ecdsa").write_bytes(ecdsa)
    with pytest.raises(
        ValueError, match=r"is not Ed25519 \(ECPrivateKey\); Flower verifies only Ed25519"
    ):
        trust.load_key(tmp_path / "ecdsa")
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(ValueError, match="expected an unencrypted OpenSSH Ed25519 private key"):
        trust.load_key(tmp_path / "junk")
    with pytest.raises(SystemExit, match=r"cannot read signing key .*missing"):
        federated_main(["sign", str(tmp_path / "reg"), "--key", str(tmp_path / "missing")])


def test_local_trust_names_the_given_key_or_keeps_its_own(tmp_path: Path) -> None:
    own_key, own_trust = local_trust(tmp_path / "a", None)
    assert local_trust(tmp_path / "a", None) == (own_key, own_trust)  # made once
    given = trust.generate_key(tmp_path / "given")[0]
    key, trusted = local_trust(tmp_path / "b", given)
    assert key == given
    public = trust.load_key(given).public_key()
    assert trusted.read_text() == trust.trusted_entities_text([public])


def test_registry_publish_and_lookup(tmp_path: Path) -> None:
    rec = {"public_key_id": "fpk_x", "signature": "s", "signed_at": 1}
    registry.publish(tmp_path, APP_ID, "0.1.0", b"one", [rec])
    registry.publish(tmp_path, APP_ID, "0.10.0", b"ten", [])
    registry.publish(tmp_path, APP_ID, "0.9.0", b"nine", [])
    fab, records = registry.lookup(tmp_path, APP_ID, "0.1.0")
    assert (fab.read_bytes(), records) == (b"one", [rec])
    assert registry.lookup(tmp_path, APP_ID, None)[0].read_bytes() == b"ten"  # latest
    with pytest.raises(LookupError, match=r"@mmo/mmo-federated==0\.2\.0 is not in this registry"):
        registry.lookup(tmp_path, APP_ID, "0.2.0")
    with pytest.raises(ValueError, match=r"app id '\.\./x' is not of the form '@account/app'"):
        registry.publish(tmp_path, "../x", "0.1.0", b"", [])
    with pytest.raises(ValueError, match=r"app version '1\.0' is not of the form x\.y\.z"):
        registry.publish(tmp_path, APP_ID, "1.0", b"", [])


def _post(url: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_registry_answers_as_flower_hub_does(tmp_path: Path) -> None:
    rec = {"public_key_id": "fpk_x", "signature": "s", "signed_at": 1}
    registry.publish(tmp_path, APP_ID, "0.1.0", b"bundle", [rec])
    srv = registry.serve_in_thread(tmp_path)
    try:
        api = registry.api_url(srv)
        status, doc = _post(f"{api}/hub/fetch-fab", {"app_id": APP_ID, "app_version": "0.1.0"})
        assert status == 200 and doc["verifications"] == [rec]
        with urllib.request.urlopen(doc["fab_url"], timeout=10) as resp:
            assert resp.read() == b"bundle"
        status, doc = _post(f"{api}/hub/fetch-fab", {"app_id": APP_ID, "app_version": "0.2.0"})
        assert (status, doc["detail"]) == (404, f"{APP_ID}==0.2.0 is not in this registry")
        status, doc = _post(f"{api}/hub/fetch-fab", {"app_version": "0.1.0"})
        assert (status, doc["detail"]) == (
            404,
            'expected a JSON object with "app_id" (and "app_version")',
        )
        status, doc = _post(f"{api}/hub/other", {})
        assert (status, doc["detail"]) == (404, "no such endpoint /v1/hub/other")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(api.removesuffix("/v1") + "/fab/../../etc/passwd", timeout=10)
    finally:
        srv.shutdown()
        srv.server_close()


# -- Flower's own checks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def flower_python(federated_venv: Path) -> Path:
    """The Flower venv's python (tests/conftest.py builds the venv when missing)."""
    return federated_venv / "bin" / "python"


def _flower_env() -> dict[str, str]:
    env = dict(os.environ)
    here = f"{ROOT / 'serving'}{os.pathsep}{ROOT / 'operator'}"
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


FLOWER_CHECKS = r"""
import hashlib, json, sys
from pathlib import Path
from flwr.superlink.servicer.control.control_handlers import _format_verification
from flwr.supernode.cli.flower_supernode import (
    _try_obtain_trusted_entities, _validate_public_keys_ed25519)
from flwr.supernode.start_client_internal import _verify_fab
from flwr.supercore.fab import Fab
from mmo_serving.federated import trust
from mmo_serving.federated.bundle import build_fab

work = Path(sys.argv[1])
key_path, trust_path = trust.generate_key(work / "project")
other_path, _ = trust.generate_key(work / "other")
key, other = trust.load_key(key_path), trust.load_key(other_path)
trusted = _try_obtain_trusted_entities(trust_path)  # what flower-supernode reads
_validate_public_keys_ed25519(trusted)
fab, another = build_fab(), build_fab({"num-rounds": 9})

def verified(content, records):
    # what the SuperLink hands the SuperNode for a registry app, then the SuperNode's check
    fab_obj = Fab(hashlib.sha256(content).hexdigest(), content, _format_verification(records))
    return _verify_fab(fab_obj, trusted)

print(json.dumps({
    "trusted_ids": sorted(trusted),
    "project": verified(fab, [trust.sign_fab(fab, key)]),
    "other_key": verified(fab, [trust.sign_fab(fab, other)]),
    "other_bundle": verified(another, [trust.sign_fab(fab, key)]),
    "no_record": verified(fab, []),
    "one_of_two": verified(fab, [trust.sign_fab(fab, other), trust.sign_fab(fab, key)]),
    "fab_has_pyproject": fab[:2] == b"PK",
}))
"""


def test_flowers_supernode_check_accepts_only_the_project_record(
    flower_python: Path, tmp_path: Path
) -> None:
    res = subprocess.run(
        [str(flower_python), "-c", FLOWER_CHECKS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_flower_env(),
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    key = trust.load_key(tmp_path / "project" / trust.SIGNING_KEY)
    assert got == {
        "trusted_ids": [trust.key_id(key.public_key())],
        "project": True,
        "other_key": False,
        "other_bundle": False,
        "no_record": False,
        "one_of_two": True,
        "fab_has_pyproject": True,
    }


# -- a real SuperLink and SuperNode -----------------------------------------------------


@pytest.fixture(scope="module")
def runs(flower_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("trust")
    res = subprocess.run(
        [str(flower_python), str(RUNS), str(work)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_flower_env(),
        check=False,
    )
    logs = "".join(
        f"\n== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in work.glob("*.log")
    )
    assert res.returncode == 0, f"runs failed:\n{res.stdout}\n{res.stderr}{logs}"
    summary = json.loads((work / "summary.json").read_text())
    return {"work": work, **summary}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_project_bundle_runs(runs: dict[str, Any]) -> None:
    work, signed = runs["work"], runs["signed"]
    assert signed["returncode"] == 0, signed["flwr_output"]
    assert "Start `flwr-clientapp` process" in signed["supernode_log"]
    assert json.loads((work / "out-signed" / "done.json").read_text())["outcomes"] == {
        "aggregated": 1
    }
    assert [a["accepted"] for a in _lines(work / "out-signed" / "arrivals.jsonl")] == [True]
    assert len(_lines(work / "site-logs" / "site-0.jsonl")) == 1  # only this run's round


@pytest.mark.parametrize("run", REFUSED)
def test_other_bundles_are_refused_before_any_code_runs(runs: dict[str, Any], run: str) -> None:
    work, got = runs["work"], runs[run]
    assert "evil.py" in runs["attacker_bundle"]
    node_log = got["supernode_log"]
    if run == "unsigned":
        # flwr run DIR: the bundle reaches the SuperNode without any record
        assert "App verification is not supported by the connected SuperLink" in node_log
    else:
        assert "FAB verification failed: the provided trusted entities could not verify" in (
            node_log
        )
    assert "flwr-clientapp" not in node_log
    assert not (work / f"attacker-ran-{run}").exists()
    arrivals = _lines(work / f"out-{run}" / "arrivals.jsonl")
    assert [a.get("error") for a in arrivals] == ["The FAB could not be verified."]
    outcomes = json.loads((work / f"out-{run}" / "done.json").read_text())["outcomes"]
    assert outcomes == {"failed": 1}
