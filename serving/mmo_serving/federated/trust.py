"""Who chooses the code a site runs: the project's signing key and the sites' trust file.

A SuperNode started with ``--trusted-entities FILE`` (Flower 1.42) runs a ClientApp only
from a Flower App bundle (FAB) that carries a verification record signed by a key the
file names. A record is ``{"public_key_id", "signature", "signed_at"}``: an Ed25519
signature over ``signed_at`` (8 bytes, big-endian) followed by the SHA-256 of the FAB's
bytes. A FAB without records (what ``flwr run DIR`` submits) or whose records no trusted
key verifies is answered with an error, and no ClientApp process starts for its run.

Flower attaches records only to FABs that the SuperLink fetched from an app registry
(Flower Hub's API; :mod:`.registry` serves the project's own), so the project builds its
bundle once (:func:`.local.build_fab`), signs it (:func:`sign_fab`) and publishes bundle
and record (:func:`.registry.publish`); runs name it ``@mmo/mmo-federated==VERSION``.

Files: ``signing-key`` (OpenSSH Ed25519 private key, mode 0600: stays with the
signer) and ``trusted-entities.yaml`` (``key id: "ssh-ed25519 ..."``, public: every
site's SuperNode gets it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SIGNING_KEY = "signing-key"
TRUSTED_ENTITIES = "trusted-entities.yaml"


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """A stable id for a public key (Flower names trusted entities ``fpk_...``)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "fpk_" + hashlib.sha256(raw).hexdigest()[:32]


def openssh_public(public_key: ed25519.Ed25519PublicKey) -> str:
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return line.decode("ascii") + " mmo-federated"


def trusted_entities_text(public_keys: list[ed25519.Ed25519PublicKey]) -> str:
    """The ``--trusted-entities`` YAML: one ``id: "ssh-ed25519 ..."`` line per key."""
    return "".join(f"{key_id(k)}: {json.dumps(openssh_public(k))}\n" for k in public_keys)


def generate_key(out_dir: Path) -> tuple[Path, Path]:
    """A new signing key in ``out_dir``: (private key file, trusted-entities file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, trust_path = out_dir / SIGNING_KEY, out_dir / TRUSTED_ENTITIES
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists: refusing to replace a signing key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    trust_path.write_text(trusted_entities_text([key.public_key()]))
    return key_path, trust_path


def load_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"cannot read signing key {path}: {e}; expected an unencrypted OpenSSH "
            "Ed25519 private key (python -m mmo_serving.federated keygen DIR makes one)"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(
            f"signing key {path} is not Ed25519 ({type(key).__name__}); Flower verifies "
            "only Ed25519 signatures"
        )
    return key


def signed_message(fab: bytes, signed_at: int) -> bytes:
    return signed_at.to_bytes(8, byteorder="big") + hashlib.sha256(fab).digest()


def sign_fab(
    fab: bytes, key: ed25519.Ed25519PrivateKey, signed_at: int | None = None
) -> dict[str, Any]:
    """The verification record of ``fab`` under ``key`` (as Flower Hub hands it out)."""
    when = int(time.time()) if signed_at is None else signed_at
    signature = key.sign(signed_message(fab, when))
    return {
        "public_key_id": key_id(key.public_key()),
        "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii"),
        "signed_at": when,
    }
