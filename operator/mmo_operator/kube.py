"""The only module that talks to the Kubernetes API (official ``kubernetes`` client).

Children are written with server-side apply (field manager ``mmo-operator``, forced: the
operator owns what it builds); status goes through the status subresource with the
object's generation as a precondition. API errors become ``kopf`` errors:

- missing resources (CRDs not installed), conflicts (409), throttling (429), server
  errors (5xx), timeouts and refused connections are temporary (retried with backoff);
- 400/422 (an object the API server refuses) are permanent until the spec changes;
- 403 is temporary with a long delay (RBAC can be fixed without touching the model).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kopf
import urllib3
from kubernetes import client, config

from mmo_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from mmo_operator.objects import Obj

FIELD_MANAGER = "mmo-operator"
USER_AGENT = "mmo-operator"  # tells its requests from kopf's in API server audit logs

# apiVersion, kind -> plural, for every kind the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("ray.io/v1", "RayService"): "rayservices",
    ("ray.io/v1", "RayCluster"): "rayclusters",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors",
    (f"{GROUP}/{VERSION}", "MultimodalModel"): PLURAL,
}

REASONS = {
    409: "Conflict",
    429: "Throttled",
    422: "Unprocessable",
    400: "Unprocessable",
    403: "Forbidden",
    404: "NotFound",
}


class KubeTemporaryError(kopf.TemporaryError):
    """Retried by kopf after ``delay``; ``reason`` is a bounded metrics label."""

    def __init__(self, message: str, *, reason: str, delay: float) -> None:
        super().__init__(message, delay=delay)
        self.reason = reason
        self.events: list[Any] = []  # what the failed reconcile did before failing


class KubePermanentError(kopf.PermanentError):
    """Not retried until the spec changes; ``reason`` is a bounded metrics label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.events: list[Any] = []


@dataclass(frozen=True)
class ApiFailure(Exception):
    status: int
    message: str
    retry_after: float | None = None


def plural_of(api_version: str, kind: str) -> str:
    return PLURALS.get((api_version, kind), kind.lower() + "s")


def path_of(
    api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str = ""
) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural_of(api_version, kind)}"
    if name:
        base += f"/{name}"
    if sub:
        base += f"/{sub}"
    return base


def load_config(pool_size: int | None = None) -> client.ApiClient:
    """The standard login: in-cluster service account, else ``KUBECONFIG``/~/.kube/config.

    ``pool_size``: HTTP connections kept to the API server, one per worker thread (the
    client's default, 5 per CPU, drops connections when more threads call at once)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    if pool_size:
        configuration.connection_pool_maxsize = pool_size
    api = client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


class Kube:
    """Thin synchronous API access used by ``reconcile`` (run in a worker thread)."""

    def __init__(
        self,
        api: client.ApiClient | None = None,
        *,
        discovery_ttl: float = 60.0,
        pool_size: int | None = None,
    ):
        self.api = api or load_config(pool_size)
        self.discovery_ttl = discovery_ttl
        self._discovery: dict[str, tuple[float, set[str]]] = {}
        # (apiVersion, kind) -> served, as the CRD watch last reported it
        self._from_crds: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self.calls = 0

    # ------------------------------------------------------------------ raw requests

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        _method, full_url, hdrs, data, _post = self.api.param_serialize(
            method=method,
            resource_path=url,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        self.calls += 1
        try:
            resp = self.api.call_api(
                method, full_url, header_params=hdrs, body=data, _request_timeout=(5, 30)
            )
            raw = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiFailure(503, f"{method} {path}: API server unreachable: {e}") from e
        if resp.status >= 400:
            message = raw.decode(errors="replace")[:500]
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(raw).get("message") or message
            retry = resp.getheader("Retry-After")
            raise ApiFailure(
                resp.status, f"{method} {path}: {message}", float(retry) if retry else None
            )
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------------ discovery

    def served_resources(self, api_version: str, *, fresh: bool = False) -> set[str]:
        """Plural names served for a group/version (cached for ``discovery_ttl``; the CRD
        watch forgets it sooner). One thread reads it while the others wait for its answer,
        so that many reconciles at start-up make one request, not one each."""
        with self._lock:
            fetching = self._fetching.setdefault(api_version, threading.Lock())
        with fetching:
            now = time.monotonic()
            with self._lock:
                cached = self._discovery.get(api_version)
            if cached and not fresh and now - cached[0] < self.discovery_ttl:
                return cached[1]
            return self._discover(api_version, now)

    def _discover(self, api_version: str, now: float) -> set[str]:
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            doc = self.request("GET", path)
            names = {r["name"] for r in doc.get("resources", []) if "/" not in r["name"]}
        except ApiFailure as e:
            if e.status != 404:
                raise
            names = set()
        with self._lock:
            self._discovery[api_version] = (now, names)
        return names

    def forget_discovery(self) -> None:
        with self._lock:
            self._discovery.clear()

    def learn_crd(self, crd: Obj, *, deleted: bool = False) -> None:
        """Take what a CustomResourceDefinition event says about the kinds it defines, so
        that ``has_kind`` needs no discovery request for them: each version is served if
        the CRD is Established and serves it, and none is once the CRD is deleted. A CRD
        not Established yet says nothing: discovery answers for its kinds meanwhile."""
        spec = crd.get("spec") or {}
        kind, group = (spec.get("names") or {}).get("kind"), spec.get("group")
        if not kind or not group:
            return
        conditions = (crd.get("status") or {}).get("conditions") or []
        established = any(
            c.get("type") == "Established" and c.get("status") == "True" for c in conditions
        )
        with self._lock:
            for version in spec.get("versions") or []:
                key = (f"{group}/{version.get('name')}", kind)
                if deleted:
                    self._from_crds[key] = False
                elif established:
                    self._from_crds[key] = bool(version.get("served", True))
                else:
                    self._from_crds.pop(key, None)

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves the kind: from the CRD watch when it reported the
        kind's CRD, else from (cached) discovery."""
        with self._lock:
            known = self._from_crds.get((api_version, kind))
        if known is not None:
            return known
        return plural_of(api_version, kind) in self.served_resources(api_version)

    # ------------------------------------------------------------------ objects

    def list(self, api_version: str, kind: str, namespace: str, labels: str) -> list[Obj]:
        doc = self.request(
            "GET", path_of(api_version, kind, namespace), query={"labelSelector": labels}
        )
        items: list[Obj] = doc.get("items", [])
        for item in items:  # list items carry no apiVersion/kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            obj: Obj = self.request("GET", path_of(api_version, kind, namespace, name))
        except ApiFailure as e:
            if e.status == 404:
                return None
            raise
        return obj

    def apply(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        path = path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        result: Obj = self.request(
            "PATCH",
            path,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return result

    def json_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        ops: Sequence[Obj],
        subresource: str = "",
    ) -> Obj:
        """A JSON patch (RFC 6902): exactly the fields named, guarded by its ``test`` ops."""
        result: Obj = self.request(
            "PATCH",
            path_of(api_version, kind, namespace, name, subresource),
            body=list(ops),
            content_type="application/json-patch+json",
        )
        return result

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            self.request(
                "DELETE",
                path_of(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
                content_type="application/json",
            )
        except ApiFailure as e:
            if e.status == 404:
                return False
            raise
        return True

    def post_event(self, about: Obj, type: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``about``, as kopf posts them (for code outside kopf's
        handlers, where ``kopf.event`` has no queue)."""
        meta = about["metadata"]
        namespace = meta.get("namespace") or "default"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"namespace": namespace, "generateName": "mmo-operator-"},
            "type": type,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": "mmo-operator"},
            "reportingComponent": "mmo-operator",
            "involvedObject": {
                "apiVersion": about.get("apiVersion"),
                "kind": about.get("kind"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "firstTimestamp": now,
            "lastTimestamp": now,
        }
        self.request(
            "POST", path_of("v1", "Event", namespace), body=event, content_type="application/json"
        )

    def patch_status(self, namespace: str, name: str, status: Obj, generation: int | None) -> bool:
        """Replace the model's status if its spec is still at ``generation``.

        A JSON patch whose ``test`` op checks ``metadata.generation``: kopf's own writes
        to the metadata (finalizer, annotations) do not conflict with it, a new spec does.
        Returns False when the spec moved on (the reconcile of the new one writes)."""
        model = (f"{GROUP}/{VERSION}", "MultimodalModel", namespace, name)
        ops: list[Obj] = [{"op": "add", "path": "/status", "value": status}]
        if generation is not None:
            ops.insert(0, {"op": "test", "path": "/metadata/generation", "value": generation})
        try:
            self.json_patch(*model, ops, subresource="status")
        except ApiFailure as e:
            if e.status != 422 or generation is None:
                raise
            current = self.get(*model)
            if current is None or current["metadata"].get("generation") != generation:
                return False
            raise
        return True


def to_kopf_error(err: ApiFailure, what: str) -> KubeTemporaryError | KubePermanentError:
    """Map an API failure to the kopf error that retries it (or not)."""
    reason = REASONS.get(err.status, "ServerError" if err.status >= 500 else "Other")
    message = f"{what}: {err.message}"
    if err.status in (400, 422):
        return KubePermanentError(message, reason=reason)
    if err.status == 409:
        return KubeTemporaryError(message, reason=reason, delay=1)
    if err.status == 429:
        return KubeTemporaryError(message, reason=reason, delay=err.retry_after or 5)
    if err.status == 403:
        return KubeTemporaryError(message, reason=reason, delay=30)
    if err.status == 503:
        return KubeTemporaryError(message, reason="Unavailable", delay=5)
    return KubeTemporaryError(message, reason=reason, delay=5)
