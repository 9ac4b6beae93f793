"""Runs of test_federated_trust, executed with the Flower venv's python: ``python
federated_trust_runs.py WORK``.

One SuperLink and one SuperNode on loopback; the SuperNode trusts only the project's key
(``WORK/project/trusted-entities.yaml``). The registry holds the project's bundle signed
by the project (0.1.0), an attacker's bundle signed by the attacker's key (0.2.0) and the
same attacker bundle carrying the project's record for the project's bundle (0.3.0). Four
runs of one round, one after the other: ``signed`` (0.1.0), ``unsigned`` (``flwr run`` of
the attacker's project directory), ``foreign-key`` (0.2.0), ``copied-signature`` (0.3.0).
The attacker's ClientApp writes ``WORK/attacker-ran-<run>`` when Python imports it.
Writes ``WORK/summary.json``: per run, the ``flwr run`` exit code and the part of the
SuperNode's log written during that run.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from mmo_serving.federated import registry, trust
from mmo_serving.federated.bundle import APP_ID, APP_SPEC, sign_and_publish, write_app
from mmo_serving.federated.loopback import LocalFederation

RUN_CONFIG = {
    "num-rounds": 1,
    "min-clients": 1,
    "model-source": "random://0",
    "scenes-per-site": 8,
    "local-epochs": 1,
    "round-timeout": 120.0,
}


def attacker_project(work: Path, version: str, run: str) -> Path:
    """The project's app id and ServerApp, the attacker's ClientApp code."""
    app = write_app(work / f"attacker-{run}")
    text = (app / "pyproject.toml").read_text()
    text = text.replace('version = "0.1.0"', f'version = "{version}"')
    text = text.replace('"mmo_serving.federated.client:app"', '"evil:app"')
    (app / "pyproject.toml").write_text(text)
    marker = work / f"attacker-ran-{run}"
    (app / "evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('attacker code ran')\n"
        "from mmo_serving.federated.client import app as project_app\n"
        "app = project_app\n"
    )
    return app


def main(work: Path) -> None:
    project_key, project_trust = trust.generate_key(work / "project")
    attacker_key, _ = trust.generate_key(work / "attacker")
    reg = work / "registry"
    assert sign_and_publish(reg, project_key) == APP_SPEC
    project_fab = (reg / "mmo" / "mmo-federated" / "0.1.0.fab").read_bytes()
    project_record = trust.sign_fab(project_fab, trust.load_key(project_key))

    foreign = build_fab_from_disk(attacker_project(work, "0.2.0", "foreign-key"))
    registry.publish(
        reg, APP_ID, "0.2.0", foreign, [trust.sign_fab(foreign, trust.load_key(attacker_key))]
    )
    copied = build_fab_from_disk(attacker_project(work, "0.3.0", "copied-signature"))
    registry.publish(reg, APP_ID, "0.3.0", copied, [project_record])
    unsigned = attacker_project(work, "0.1.0", "unsigned")

    runs = {
        "signed": APP_SPEC,
        "unsigned": str(unsigned),
        "foreign-key": f"{APP_ID}==0.2.0",
        "copied-signature": f"{APP_ID}==0.3.0",
    }
    # the attacker's code travels in the bundle: refusing it is what keeps it from running
    summary: dict[str, object] = {
        "attacker_bundle": zipfile.ZipFile(io.BytesIO(foreign)).namelist()
    }
    with LocalFederation(work, trusted_entities=project_trust, registry_root=reg, sites=1) as fed:
        node_log = work / "supernode-0.log"
        for name, app in runs.items():
            seen = node_log.stat().st_size if node_log.exists() else 0
            out = work / f"out-{name}"
            proc = fed.run(app, {**RUN_CONFIG, "out-dir": str(out)}, timeout=300)
            with open(node_log, "rb") as f:
                f.seek(seen)
                summary[name] = {
                    "returncode": proc.returncode,
                    "flwr_output": (proc.stdout + proc.stderr)[-4000:],
                    "supernode_log": f.read().decode(errors="replace"),
                }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
