"""Per-request classification and routing decision (pure; no I/O).

Classification
    The client declares a class with ``X-Data-Class: public|internal|sensitive``; when the
    header is absent the policy default (``IsolationArgs.default_data_class``) applies.
    A request carrying an image is ``sensitive`` unless ``images_sensitive`` is off.
    A request whose text contains PII (see :mod:`.pii`) is raised to ``sensitive``; so
    is one with PII in any other string it carries (a dict key, a protocol keyword such
    as ``model``, a remote image URL: see :mod:`.request`).

Decision (first rule that applies wins; the headers are parsed by :mod:`.headers`)
    1. private and federated modes: ``X-Route: cloud`` is refused (403: the deployment
       has no cloud endpoint); otherwise local.
    2. hybrid: ``X-Route: local`` -> local. Otherwise the request may be offloaded when
       its class is listed in ``offloadDataClasses`` -- or, when it is sensitive *only*
       because of PII in its text and ``redactPII`` is on, when its declared class is
       listed: the PII is then replaced by ``[KIND]`` placeholders before it leaves, and
       what leaves is no longer sensitive. A request declared sensitive, or carrying a
       sensitive image, never leaves. An eligible request is offloaded when the client
       asks (``X-Route: cloud``) or the local queue is over ``queueThreshold``.
    3. A request with a remote image URL that would be served locally is refused (403):
       the server never fetches URLs (and in private mode it could not).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from mmo_serving.config import DataClass, IsolationArgs
from mmo_serving.gateway import pii
from mmo_serving.gateway.headers import Route
from mmo_serving.gateway.request import Scan

Action = Literal["local", "offload", "refuse"]

REMOTE_IMAGES_NOT_FETCHED = (
    "remote image URLs are not fetched: send the image inline as a data: URL "
    "(data:image/png;base64,...)"
)


@dataclass(frozen=True)
class Classification:
    declared: DataClass  # header (or default), raised to sensitive by an image
    data_class: DataClass  # declared, raised to sensitive when the text holds PII
    pii: Counter[str] = field(default_factory=Counter)
    inline_images: int = 0
    remote_images: int = 0
    source: str = "default"  # where `declared` came from: header, default, image

    @property
    def sensitive_only_by_pii(self) -> bool:
        return self.declared != "sensitive" and self.data_class == "sensitive"


def classify(
    declared_header: DataClass | None, scanned: Scan, args: IsolationArgs
) -> Classification:
    """``declared_header``: the parsed ``X-Data-Class`` (None when absent)."""
    declared: DataClass
    if declared_header is None:
        declared, source = args.default_data_class, "default"
    else:
        declared, source = declared_header, "header"
    images = scanned.inline_images + scanned.remote_images
    if images and args.images_sensitive and declared != "sensitive":
        declared, source = "sensitive", "image"
    found: Counter[str] = pii.count_parts(scanned.strings())
    data_class: DataClass = "sensitive" if found else declared
    return Classification(
        declared=declared,
        data_class=data_class,
        pii=found,
        inline_images=scanned.inline_images,
        remote_images=scanned.remote_images,
        source=source,
    )


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    destination: str  # "local", the cloud endpoint, or "none" (refused)
    data_class: DataClass  # the class of what is processed or sent (metrics label)
    status: int = 200
    code: str = ""  # machine-readable refusal code
    redact: bool = False  # offload with PII placeholders


def _refuse(reason: str, data_class: DataClass, code: str, status: int = 403) -> Decision:
    return Decision("refuse", reason, "none", data_class, status=status, code=code)


def _local(cls: Classification, reason: str) -> Decision:
    if cls.remote_images:
        return _refuse(
            f"{REMOTE_IMAGES_NOT_FETCHED} ({reason})",
            cls.data_class,
            code="remote_image_refused",
        )
    return Decision("local", reason, "local", cls.data_class)


def decide(
    args: IsolationArgs, cls: Classification, route: Route, queue_depth: int = 0
) -> Decision:
    mode = args.mode
    if mode != "hybrid":
        if route == "cloud":
            return _refuse(
                f"X-Route: cloud refused: isolation mode {mode} has no cloud endpoint; "
                "nothing leaves the cluster",
                cls.data_class,
                code="cloud_route_refused",
            )
        return _local(cls, f"mode {mode}: served locally")
    hybrid = args.hybrid
    if hybrid is None:  # IsolationArgs built without its hybrid block: fail closed
        return _local(cls, "mode hybrid without a hybrid policy: served locally")
    if route == "local":
        return _local(cls, "client asked X-Route: local")
    listed = set(hybrid.offload_data_classes) - {"sensitive"}  # sensitive never leaves
    redact = False
    if cls.data_class in listed:
        sent: DataClass = cls.data_class
    elif cls.sensitive_only_by_pii and hybrid.redact_pii and cls.declared in listed:
        sent, redact = cls.declared, True
    else:
        why = (
            "sensitive data never leaves"
            if cls.data_class == "sensitive"
            else f"class {cls.data_class} is not in offloadDataClasses"
        )
        if cls.sensitive_only_by_pii and not hybrid.redact_pii:
            why = "PII found and redactPII is off: sensitive data never leaves"
        return _local(cls, f"{why}: served locally")
    if route == "cloud":
        trigger = "client asked X-Route: cloud"
    elif queue_depth > hybrid.queue_threshold:
        trigger = f"local queue {queue_depth} over threshold {hybrid.queue_threshold}"
    else:
        return _local(cls, f"local queue {queue_depth} within threshold {hybrid.queue_threshold}")
    reason = f"{trigger}; class {sent} may be offloaded"
    if redact:
        reason += " after PII redaction"
    # With redactPII on, every outbound body is redacted, found PII or not.
    return Decision("offload", reason, hybrid.endpoint, sent, redact=redact or hybrid.redact_pii)
