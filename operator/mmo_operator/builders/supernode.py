"""The site's Flower SuperNode Deployment in federated mode (pure).

One replica of ``flower-supernode`` connects to ``spec.isolation.federated.aggregator``
(TLS: no ``--insecure``; the system CA bundle of the image verifies the SuperLink) and runs
the mmo ClientApp (``mmo_serving.federated.client``) in a subprocess for each round. Its
node config carries the site's own differential-privacy parameters (the ClientApp
never lets the aggregator lower them), with ``secureAggregation`` the number of sites
every sum must hold (``secure-shares``: the site then answers only SecAgg+ rounds of at
least that many sites, see :mod:`mmo_serving.federated.secure`), and where the site
keeps its feature cache and the per-round clipping log.

The pod carries the model's labels (``serving.mmo.dev/model``), so the model's
NetworkPolicies apply to it: default deny, DNS, and egress only to the aggregator's
CIDRs on its port. It runs under the restricted Pod Security Standard with a read-only
root filesystem (writable ``emptyDir`` for ``/tmp`` and ``FLWR_HOME``).

The SuperNode runs only Flower App bundles signed by a key it trusts
(``--trusted-entities``): the public trust file (``trusted-entities.yaml``, made by
``python -m mmo_serving.federated keygen``) is mounted read-only from the Secret
``mmo-federated-trust`` in the model's namespace (``TRUST_SECRET_ANNOTATION`` names
another), and only that key of the Secret. Without the Secret the pod does not start:
a site never runs whatever bundle the aggregator was handed. The signing key itself
never enters the pod.

The image must hold ``flwr`` and mmo in one environment *without* Ray Serve (Flower
pins FastAPI/Starlette versions Ray Serve cannot use): ``FEDERATED_IMAGE_ANNOTATION``
on the MultimodalModel names it; the default is the serving image's ``-federated``
variant. ``PARTITION_ANNOTATION`` (``"I/N"``) tells the built-in synthetic task which
share of the data this site holds (demos); default ``0/1``.
"""

from __future__ import annotations

import re

from mmo_operator.api.v1alpha1 import MultimodalModel

from .common import Obj, labels, metadata
from .pod_env import base_env
from .rayservice import restricted_container_context, restricted_pod_context

FEDERATED_IMAGE_ANNOTATION = "serving.mmo.dev/federated-image"
PARTITION_ANNOTATION = "serving.mmo.dev/federated-partition"
TRUST_SECRET_ANNOTATION = "serving.mmo.dev/federated-trust-secret"
DEFAULT_TRUST_SECRET = "mmo-federated-trust"
TRUSTED_ENTITIES_KEY = "trusted-entities.yaml"
TRUST_DIR = "/etc/mmo/federated-trust"
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CLIENTAPP_PORT = 9094
WORK_DIR = "/tmp/mmo-federated"
FLWR_HOME = "/tmp/flwr-home"


def supernode_name(model: MultimodalModel) -> str:
    return f"{model.name}-supernode"


def _image(model: MultimodalModel) -> str:
    ann = model.metadata.annotations or {}
    if FEDERATED_IMAGE_ANNOTATION in ann:
        return str(ann[FEDERATED_IMAGE_ANNOTATION])
    image = model.spec.serving.image
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return f"{repo}:{tag}-federated"
    return f"{image}:latest-federated"


def _partition(model: MultimodalModel) -> tuple[int, int]:
    ann = model.metadata.annotations or {}
    raw = ann.get(PARTITION_ANNOTATION)
    if raw is None:
        return 0, 1
    i, sep, n = str(raw).partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise ValueError(
            f"metadata.annotations[{PARTITION_ANNOTATION!r}] is {raw!r}; expected 'I/N' with "
            "0 <= I < N (this site's share of the built-in task), e.g. '0/3'"
        )
    return int(i), int(n)


def trust_secret(model: MultimodalModel) -> str:
    """The Secret holding the site's ``trusted-entities.yaml``."""
    ann = model.metadata.annotations or {}
    name = str(ann.get(TRUST_SECRET_ANNOTATION, DEFAULT_TRUST_SECRET))
    if len(name) > 253 or not _SECRET_NAME.match(name):
        raise ValueError(
            f"metadata.annotations[{TRUST_SECRET_ANNOTATION!r}] is {name!r}; expected the "
            "name of a Secret in the model's namespace (a DNS subdomain: lowercase letters, "
            "digits, '-' and '.'), e.g. 'mmo-federated-trust'"
        )
    return name


def _node_config(model: MultimodalModel) -> str:
    fed = model.spec.isolation.federated
    assert fed is not None
    dp = fed.differential_privacy
    part, parts = _partition(model)
    values = {
        "partition-id": str(part),
        "num-partitions": str(parts),
        "clip-norm": repr(float(dp.clip_norm)),
        "noise-multiplier": repr(float(dp.noise_multiplier)),
        "model-source": f'"{model.spec.model.source}"',
        "log-dir": f'"{WORK_DIR}/logs"',
        "cache-dir": f'"{WORK_DIR}/cache"',
    }
    if fed.secure_aggregation:
        # the site refuses unmasked or under-sized rounds and divides its noise by sqrt
        values["secure-shares"] = str(fed.min_clients)
    return " ".join(f"{k}={v}" for k, v in values.items())


def build_supernode(model: MultimodalModel, uid: str | None = None) -> Obj | None:
    """The SuperNode Deployment, or None unless ``spec.isolation.mode`` is federated."""
    fed = model.spec.isolation.federated
    if model.spec.isolation.mode != "federated" or fed is None:
        return None
    pod_labels = {**labels(model), "serving.mmo.dev/role": "supernode"}
    container: Obj = {
        "name": "supernode",
        "image": _image(model),
        "command": ["flower-supernode"],
        "args": [
            "--superlink",
            fed.aggregator,
            "--node-config",
            _node_config(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(CLIENTAPP_PORT),
            "--trusted-entities",
            f"{TRUST_DIR}/{TRUSTED_ENTITIES_KEY}",
        ],
        "env": [
            *base_env(model),
            {"name": "FLWR_HOME", "value": FLWR_HOME},
            {"name": "FLWR_TELEMETRY_ENABLED", "value": "0"},
        ],
        "resources": {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        "securityContext": {**restricted_container_context(), "readOnlyRootFilesystem": True},
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "trusted-entities", "mountPath": TRUST_DIR, "readOnly": True},
        ],
    }
    # de-duplicate env names (FLWR_TELEMETRY_ENABLED may already come from the policy)
    env: dict[str, Obj] = {}
    for entry in container["env"]:
        env.setdefault(entry["name"], entry)
    container["env"] = list(env.values())
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(model, supernode_name(model), uid),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(pod_labels)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": restricted_pod_context(),
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                        {
                            "name": "trusted-entities",
                            # only the public trust file; not optional: no trust, no start
                            "secret": {
                                "secretName": trust_secret(model),
                                "items": [
                                    {"key": TRUSTED_ENTITIES_KEY, "path": TRUSTED_ENTITIES_KEY}
                                ],
                                "defaultMode": 0o444,
                            },
                        },
                    ],
                },
            },
        },
    }
