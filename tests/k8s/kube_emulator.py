"""A strict Kubernetes API emulator built on KMock 0.8 (tests only).

KMock's ``KubernetesEmulator`` serves discovery, lists, watches and writes from an
in-memory object store, but it is too lenient for kopf 1.45 and for an operator that
uses server-side apply. This subclass keeps KMock's HTTP server, request parsing,
request log, discovery and object history, and replaces the write/read semantics with
what a real API server does for the calls the operator and kopf make:

- ``metadata.uid``/``resourceVersion``/``generation``/``creationTimestamp`` assigned
  by the server; one cluster-wide resourceVersion counter; no-op writes change nothing;
- merge patch (RFC 7386), JSON patch (RFC 6902, a failed ``test`` op answers 422, as
  kopf expects) and server-side apply with field managers (``managedFields``), owned
  fields removed when a manager stops applying them, 409 on conflicts without
  ``force``; strategic merge patch is treated as a merge patch;
- optimistic concurrency: a write carrying a stale ``metadata.resourceVersion`` (or a
  delete precondition) answers 409 Conflict;
- the status subresource is isolated: writes to the main resource ignore ``status``,
  writes to ``/status`` change only ``status``; ``generation`` moves only on spec
  changes;
- label selectors (equality and set based) and field selectors on lists and watches;
- watches resume from a resourceVersion; a version older than the compacted history
  answers an ERROR event with code 410 (``compact()`` and ``expire_watches()``);
- finalizers and deletionTimestamp; garbage collection of dependents through
  ``ownerReferences`` once every owner is gone (unless ``propagationPolicy=Orphan``);
- CustomResourceDefinitions register and unregister their resources in discovery, and
  are ``Established`` as soon as they are created;
- fault injection (``inject()``): the next N matching requests answer a given status
  before touching any state.

Known simplifications: lists in server-side apply are atomic (no list-map merge), only
``Apply`` managers own fields (``Update`` managers are not tracked), PUT is not served.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import datetime
import itertools
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
import yaml
from kmock._internal import apps, enums, rendering  # the server internals we extend

from mmo_operator.objects import Obj

Key = tuple[kmock.resource, str | None, str]

STATUS_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object."""

    def __init__(
        self, code: int, message: str, reason: str | None = None, details: Obj | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or STATUS_REASONS.get(code, "Unknown")
        self.details = details or {}

    def status(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
            "details": self.details,
        }


@dataclass
class Fault:
    """Answer ``code`` to the next ``count`` requests matching all the given criteria."""

    code: int
    count: int = 1
    method: str | None = None
    resource: kmock.resource | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    watch: bool | None = None
    retry_after: int | None = None
    hits: int = 0

    def matches(self, request: rendering.Request) -> bool:
        if self.count <= 0:
            return False
        if self.method is not None and request.method.value != self.method.upper():
            return False
        if self.resource is not None and (
            request.resource is None or not self.resource.check(request.resource)
        ):
            return False
        if self.namespace is not None and request.namespace != self.namespace:
            return False
        if self.name is not None and request.name != self.name:
            return False
        if self.subresource is not None and request.subresource != self.subresource:
            return False
        is_watch = request.params.get("watch") in ("true", "1")
        return self.watch is None or self.watch == is_watch


# ----------------------------------------------------------------------------- selectors

_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate on labels for a Kubernetes label selector string."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_selector(text or ""):
        m = _SET_RE.match(term)
        if m:
            key, op, raw = m.group(1), m.group(2), m.group(3)
            values = {v.strip() for v in raw.split(",") if v.strip()}
            if op == "in":
                checks.append(lambda lb, k=key, vs=values: lb.get(k) in vs)
            else:
                checks.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            checks.append(lambda lb, k=key, v=value: lb.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            checks.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif term.startswith("!"):
            absent = term[1:].strip()
            checks.append(lambda lb, k=absent: k not in lb)
        else:
            checks.append(lambda lb, k=term: k in lb)
    return lambda labels: all(check(labels) for check in checks)


def parse_field_selector(text: str) -> Callable[[Obj], bool]:
    """A predicate on objects for a field selector (``a.b=c``, ``a.b!=c``)."""
    checks: list[Callable[[Obj], bool]] = []
    for term in _split_selector(text or ""):
        negate = "!=" in term
        path, value = (s.strip() for s in term.replace("==", "=").split("!=" if negate else "=", 1))

        def get(obj: Obj, path: str = path) -> str:
            cur: Any = obj
            for part in path.split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            return "" if cur is None else str(cur)

        checks.append(lambda o, g=get, v=value, n=negate: (g(o) != v) if n else (g(o) == v))
    return lambda obj: all(check(obj) for check in checks)


# ----------------------------------------------------------------------------- field sets


def field_paths(config: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Leaf paths of an applied configuration (lists are atomic)."""
    if isinstance(config, dict) and config:
        paths: set[tuple[str, ...]] = set()
        for key, value in config.items():
            paths |= field_paths(value, (*prefix, key))
        return paths
    return {prefix} if prefix else set()


def paths_to_fields_v1(paths: Iterable[tuple[str, ...]]) -> Obj:
    root: Obj = {}
    for path in sorted(paths):
        cur = root
        for part in path:
            cur = cur.setdefault(f"f:{part}", {})
    return root


def fields_v1_to_paths(fields: Obj, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for key, sub in fields.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        paths |= fields_v1_to_paths(sub, path) if sub else {path}
    return paths


def _get_path(obj: Any, path: tuple[str, ...]) -> Any:
    cur = obj
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _remove_path(obj: Obj, path: tuple[str, ...]) -> None:
    parents = [obj]
    cur: Any = obj
    for part in path[:-1]:
        if not isinstance(cur, dict) or part not in cur:
            return
        cur = cur[part]
        parents.append(cur)
    if isinstance(cur, dict):
        cur.pop(path[-1], None)
    # prune the dicts that this removal left empty
    for depth in range(len(path) - 1, 0, -1):
        parent, child = parents[depth - 1], parents[depth]
        if isinstance(child, dict) and not child:
            parent.pop(path[depth - 1], None)


def deep_merge(base: Obj, config: Mapping[str, Any]) -> Obj:
    """Recursive merge: dicts merge, everything else (lists too) replaces."""
    for key, value in config.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_MISSING = object()
SERVER_META = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


# ----------------------------------------------------------------------------- emulator


@dataclass
class _Watch:
    resource: kmock.resource
    namespace: str | None


class StrictEmulator(kmock.KubernetesEmulator):
    """KMock's emulator with API-server semantics (see the module docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.rv = 0
        self.events: list[tuple[int, kmock.resource, Obj]] = []
        self._event_rvs: list[int] = []  # the rv of each event, for bisecting
        self.compacted_rv = 0
        self.max_events = 20000
        self.faults: list[Fault] = []
        self.gc_delay = 0.05
        self._changed: asyncio.Event | None = None
        self._watch_generation = 0
        self._uids: dict[str, Key] = {}
        self._by_resource: dict[kmock.resource, dict[tuple[str | None, str], Any]] = {}
        self._direct = {
            enums.action.LIST: self._serve_list,
            enums.action.FETCH: self._serve_fetch,
            enums.action.CREATE: self._serve_create,
            enums.action.UPDATE: self._serve_update,
            enums.action.DELETE: self._serve_delete,
        }
        self.resources.load_bundled()

    # -------------------------------------------------------------- public helpers

    def register(
        self,
        resource: str,
        kind: str,
        *,
        namespaced: bool = True,
        status: bool = False,
        verbs: Iterable[str] = ("create", "delete", "get", "list", "patch", "update", "watch"),
    ) -> kmock.resource:
        """Declare a resource in discovery (as a CRD would)."""
        res = kmock.resource(resource)
        self.resources[res] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs=set(verbs),
            subresources={"status"} if status else set(),
        )
        return res

    def unregister(self, resource: str | kmock.resource) -> None:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        if res in self.resources:
            del self.resources[res]

    def inject(self, code: int, count: int = 1, **criteria: Any) -> Fault:
        """Answer ``code`` to the next ``count`` matching requests (before any change)."""
        if isinstance(criteria.get("resource"), str):
            criteria["resource"] = kmock.resource(criteria["resource"])
        fault = Fault(code=code, count=count, **criteria)
        self.faults.append(fault)
        return fault

    def compact(self) -> None:
        """Forget the event history: resuming a watch from an older version answers 410."""
        self.compacted_rv = self.rv
        self.events.clear()
        self._event_rvs.clear()

    def expire_watches(self) -> None:
        """Compact and make every open watch answer 410 Gone (as after an etcd compaction)."""
        self.compact()
        self._watch_generation += 1
        self._notify()

    def prune_history(self) -> None:
        """Drop past versions of every object (long tests), keeping the latest state."""
        for key in list(self.objects):
            obj = self.objects[key]
            if obj.deleted:
                del self.objects[key]
                self._by_resource.get(key[0], {}).pop(key[1:], None)
            else:
                obj.history = [obj.last.raw]

    def get(self, resource: str | kmock.resource, namespace: str | None, name: str) -> Obj | None:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        key = (res, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def list(
        self, resource: str | kmock.resource, namespace: str | None = None, labels: str = ""
    ) -> list[Obj]:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        return [copy.deepcopy(o) for o in self._select(res, namespace, labels, "")]

    # The same code paths as the HTTP API, for tests that play other controllers.
    def create(self, resource: str | kmock.resource, obj: Obj) -> Obj:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        ns = obj.get("metadata", {}).get("namespace")
        return self._create(res, ns, copy.deepcopy(obj))

    def patch(
        self,
        resource: str | kmock.resource,
        namespace: str | None,
        name: str,
        patch: Obj,
        *,
        subresource: str | None = None,
    ) -> Obj:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        return self._patch(
            res, namespace, name, subresource, "application/merge-patch+json", patch, {}
        )

    def delete(self, resource: str | kmock.resource, namespace: str | None, name: str) -> Obj:
        res = kmock.resource(resource) if isinstance(resource, str) else resource
        return self._delete(res, namespace, name, {})

    def writes(self, since: int = 0) -> list[rendering.Request]:
        """Writing requests (POST/PATCH/PUT/DELETE) with an id >= ``since``."""
        return [
            r
            for r in self._requests[since:]
            if r.method.value in ("POST", "PATCH", "PUT", "DELETE")
        ]

    @property
    def request_count(self) -> int:
        return len(self._requests)

    @property
    def request_log(self) -> list[rendering.Request]:
        return list(self._requests)

    # -------------------------------------------------------------- request dispatch

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            for fault in self.faults:
                if fault.matches(request):
                    fault.count -= 1
                    fault.hits += 1
                    err = ApiError(fault.code, f"injected fault {fault.code}")
                    headers = {}
                    if fault.retry_after is not None:
                        headers["Retry-After"] = str(fault.retry_after)
                        err.details = {"retryAfterSeconds": fault.retry_after}
                    return aiohttp.web.json_response(
                        err.status(), status=fault.code, headers=headers
                    )
            if request.resource is not None and request.method.value == "PUT":
                raise ApiError(405, "PUT is not served by this emulator; use PATCH")
            known = request.resource is not None and request.resource.plural is not None
            direct = self._direct.get(request.action) if known else None
            if direct is not None and request.params.get("watch") not in ("true", "1"):
                # Object requests skip KMock's reaction matching (costly per request);
                # faults are injected with inject(), not with DSL reactions.
                payload = await direct(request)
                status = 200
                if isinstance(payload, rendering.Response):
                    status, payload = payload.status or 200, payload.payload
                return aiohttp.web.json_response(payload, status=status)
            # Skip KubernetesEmulator._handle (it mutates before dispatching); the
            # fallbacks registered by its __attrs_post_init__ call our _serve_* below.
            return await apps.RawHandler._handle(self, request)
        except ApiError as e:
            return aiohttp.web.json_response(e.status(), status=e.code)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, ApiError):
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        return await super()._render_error(exc)

    def _get_resources(self) -> list[kmock.resource]:
        # Only declared resources exist (not every resource that ever held an object).
        return list(self.resources)

    def _info(self, res: kmock.resource | None) -> kmock.ResourceInfo:
        if res is None or res not in self.resources:
            raise ApiError(404, "the server could not find the requested resource")
        return self.resources[res]

    def _has_status(self, res: kmock.resource) -> bool:
        return "status" in self._info(res).subresources

    # -------------------------------------------------------------- reads

    def _select(
        self, res: kmock.resource, namespace: str | None, labels: str, fields: str
    ) -> list[Obj]:
        label_ok = parse_label_selector(labels)
        field_ok = parse_field_selector(fields)
        out = []
        for (ns, _name), obj in list(self._by_resource.get(res, {}).items()):
            if obj.deleted:
                continue
            if namespace is not None and ns != namespace:
                continue
            raw = obj.raw
            if label_ok(raw.get("metadata", {}).get("labels") or {}) and field_ok(raw):
                out.append(raw)
        return out

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        info = self._info(request.resource)
        assert request.resource is not None
        items = self._select(
            request.resource,
            request.namespace,
            request.params.get("labelSelector", ""),
            request.params.get("fieldSelector", ""),
        )
        res = request.resource
        return {
            "apiVersion": f"{res.group}/{res.version}" if res.group else res.version,
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": copy.deepcopy(items),
        }

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        self._info(request.resource)
        assert request.resource is not None and request.name is not None
        return self._existing(request.resource, request.namespace, request.name)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        self._info(request.resource)
        assert request.resource is not None and self._changed is not None
        res, ns = request.resource, request.namespace
        label_ok = parse_label_selector(request.params.get("labelSelector", ""))
        field_ok = parse_field_selector(request.params.get("fieldSelector", ""))
        if request.name is not None:
            name_ok = request.name

            def field_ok_named(o: Obj, base: Callable[[Obj], bool] = field_ok) -> bool:
                return base(o) and o.get("metadata", {}).get("name") == name_ok

            field_ok = field_ok_named
        timeout = request.params.get("timeoutSeconds")
        deadline = (
            asyncio.get_running_loop().time() + float(timeout) if timeout is not None else None
        )
        since_raw = request.params.get("resourceVersion", "")
        generation = self._watch_generation

        def selected(obj: Obj) -> bool:
            meta = obj.get("metadata", {})
            if ns is not None and meta.get("namespace") != ns:
                return False
            return label_ok(meta.get("labels") or {}) and field_ok(obj)

        yield b""  # send the headers now: the stream is open even if nothing happens
        if since_raw in ("", "0"):
            for obj in self._select(res, ns, "", ""):
                if selected(obj):
                    yield {"type": "ADDED", "object": copy.deepcopy(obj)}
            since = self.rv
        else:
            since = int(since_raw)
            if since < self.compacted_rv:
                yield self._gone(since)
                return
        while True:
            if generation != self._watch_generation:
                yield self._gone(since)
                return
            start = bisect.bisect_right(self._event_rvs, since)
            for rv, r, event in self.events[start:]:
                if r == res and selected(event["object"]):
                    yield copy.deepcopy(event)
                since = max(since, rv)
            since = max(since, self.rv)
            wait = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if wait is not None and wait <= 0:
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=wait)
            except TimeoutError:
                return

    def _gone(self, since: int) -> Obj:
        err = ApiError(
            410, f"too old resource version: {since} ({self.compacted_rv})", reason="Expired"
        )
        return {"type": "ERROR", "object": err.status()}

    # -------------------------------------------------------------- writes

    def _existing(self, res: kmock.resource, ns: str | None, name: str) -> Obj:
        key = (res, ns, name)
        if key not in self.objects or self.objects[key].deleted:
            info = self._info(res)
            raise ApiError(
                404,
                f'{res.plural}.{res.group or "core"} "{name}" not found',
                details={"name": name, "group": res.group, "kind": info.kind},
            )
        return copy.deepcopy(self.objects[key].raw)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _emit(self, res: kmock.resource, kind: str, obj: Obj) -> None:
        self.events.append((self.rv, res, {"type": kind, "object": copy.deepcopy(obj)}))
        self._event_rvs.append(self.rv)
        if len(self.events) > self.max_events:
            drop = len(self.events) - self.max_events
            self.compacted_rv = self.events[drop - 1][0]
            del self.events[:drop]
            del self._event_rvs[:drop]
        self._notify()

    def _store(self, res: kmock.resource, obj: Obj, event: str) -> Obj:
        meta = obj["metadata"]
        key = (res, meta.get("namespace"), meta["name"])
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        if key not in self.objects:
            self.objects[key] = obj
            self._by_resource.setdefault(res, {})[key[1:]] = self.objects[key]
        elif self.objects[key].deleted:
            self.objects[key].create(obj)
        else:
            self.objects[key].history.append(obj)
        self._uids[meta["uid"]] = key
        self._emit(res, event, obj)
        return copy.deepcopy(obj)

    def _create(self, res: kmock.resource, ns: str | None, obj: Obj) -> Obj:
        info = self._info(res)
        if not isinstance(obj, dict):
            raise ApiError(400, "the request body is not a JSON object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "metadata.name: Required value: name or generateName is required")
        if info.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise ApiError(400, "the namespace of the object does not match the URL")
            meta["namespace"] = ns or meta.get("namespace")
            if not meta["namespace"]:
                raise ApiError(422, "metadata.namespace: Required value")
        else:
            meta.pop("namespace", None)
        key = (res, meta.get("namespace"), meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise ApiError(
                409,
                f'{res.plural} "{meta["name"]}" already exists',
                reason="AlreadyExists",
            )
        for k in SERVER_META:
            if k != "managedFields":
                meta.pop(k, None)
        meta.pop("deletionTimestamp", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        if self._has_status(res):
            obj.pop("status", None)
        if res == kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"):
            self._crd_installed(obj)
        return self._store(res, obj, "ADDED")

    def _commit(self, res: kmock.resource, old: Obj, new: Obj) -> Obj:
        """Store ``new`` unless nothing changed; bump generation on spec changes."""
        meta = new["metadata"]
        for k in ("uid", "creationTimestamp", "name", "namespace"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        meta["generation"] = old["metadata"].get("generation", 1)
        if "deletionTimestamp" in old["metadata"]:
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        if new == old:
            return new
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = meta["generation"] + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            stored = self._store(res, new, "MODIFIED")
            self._finally_delete(res, new)
            return stored
        return self._store(res, new, "MODIFIED")

    def _check_precondition(self, old: Obj, body: Any) -> None:
        if not isinstance(body, dict):
            return
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Operation cannot be fulfilled: the object has been modified; "
                "please apply your changes to the latest version and try again",
            )

    def _patch(
        self,
        res: kmock.resource,
        ns: str | None,
        name: str,
        subresource: str | None,
        content_type: str,
        body: Any,
        params: Mapping[str, str],
    ) -> Obj:
        self._info(res)
        if subresource not in (None, "status"):
            raise ApiError(404, f"subresource {subresource!r} is not served")
        if subresource == "status" and not self._has_status(res):
            raise ApiError(404, f"{res.plural} has no status subresource")
        ctype = content_type.split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            return self._apply(res, ns, name, subresource, body, params)
        old = self._existing(res, ns, name)
        if ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiError(400, "a merge patch must be a JSON object")
            self._check_precondition(old, body)
            candidate = merge_patch(old, body)
        elif ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "a JSON patch must be a list of operations")
            try:
                candidate = jsonpatch.apply_patch(old, body, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise ApiError(422, f"the server rejected our request: {e}") from e
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise ApiError(422, f"invalid JSON patch: {e}") from e
        else:
            raise ApiError(415, f"unsupported patch type {ctype!r}", reason="UnsupportedMediaType")
        return self._commit(res, old, self._isolate(res, old, candidate, subresource))

    def _isolate(self, res: kmock.resource, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """Apply the status-subresource rules to a candidate object."""
        if not self._has_status(res):
            return new
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        result = copy.deepcopy(new)
        if "status" in old:
            result["status"] = copy.deepcopy(old["status"])
        else:
            result.pop("status", None)
        return result

    def _apply(
        self,
        res: kmock.resource,
        ns: str | None,
        name: str,
        subresource: str | None,
        body: Any,
        params: Mapping[str, str],
    ) -> Obj:
        manager = params.get("fieldManager")
        if not manager:
            raise ApiError(400, "fieldManager is required for apply requests")
        if not isinstance(body, dict):
            raise ApiError(400, "an apply configuration must be an object")
        force = params.get("force") in ("true", "1")
        config = copy.deepcopy(body)
        cmeta = config.setdefault("metadata", {})
        if cmeta.get("name") not in (None, name):
            raise ApiError(400, "the name of the object does not match the URL")
        for k in ("apiVersion", "kind"):
            if k not in config:
                raise ApiError(400, f"{k} is required in an apply configuration")
        if self._has_status(res):
            if subresource == "status":
                config = {k: v for k, v in config.items() if k in ("apiVersion", "kind", "status")}
                config["metadata"] = {"name": name}
            else:
                config.pop("status", None)
        cmeta = config["metadata"]
        cmeta["name"] = name
        if ns is not None:
            cmeta["namespace"] = ns
        wanted_rv = cmeta.pop("resourceVersion", None)
        for k in SERVER_META:
            cmeta.pop(k, None)
        new_paths = field_paths(config) - {("metadata", "name"), ("metadata", "namespace")}
        key = (res, ns, name)
        if key not in self.objects or self.objects[key].deleted:
            if wanted_rv is not None:
                raise ApiError(409, "the object does not exist: resourceVersion precondition")
            obj = copy.deepcopy(config)
            obj["metadata"]["managedFields"] = [self._entry(manager, config, new_paths)]
            return self._create(res, ns, obj)

        old = self._existing(res, ns, name)
        self._check_precondition(old, {"metadata": {"resourceVersion": wanted_rv}})
        entries = list(old["metadata"].get("managedFields") or [])
        mine = [e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"]
        others = [e for e in entries if e not in mine]
        old_paths = fields_v1_to_paths(mine[0].get("fieldsV1", {})) if mine else set()
        other_paths: dict[tuple[str, ...], str] = {}
        for e in others:
            if e.get("operation") == "Apply":
                for p in fields_v1_to_paths(e.get("fieldsV1", {})):
                    other_paths[p] = e["manager"]
        conflicts = [
            p for p in new_paths if p in other_paths and _get_path(old, p) != _get_path(config, p)
        ]
        if conflicts and not force:
            causes = [
                {
                    "reason": "FieldManagerConflict",
                    "field": "." + ".".join(p),
                    "message": f'conflict with "{other_paths[p]}"',
                }
                for p in sorted(conflicts)
            ]
            raise ApiError(
                409,
                f"Apply failed with {len(conflicts)} conflict(s): "
                + "; ".join(c["message"] + " using " + c["field"] for c in causes),
                details={"causes": causes},
            )
        new = copy.deepcopy(old)
        new["metadata"].pop("managedFields", None)
        for p in old_paths - new_paths:
            if p not in other_paths:
                _remove_path(new, p)
        deep_merge(new, config)
        if force:
            for e in others:
                if e.get("operation") == "Apply":
                    kept = fields_v1_to_paths(e.get("fieldsV1", {})) - new_paths
                    e["fieldsV1"] = paths_to_fields_v1(kept)
        new = self._isolate(res, old, new, subresource)
        old_entry = mine[0] if mine else None
        entry = self._entry(manager, config, new_paths)
        if old_entry is not None and old_entry.get("fieldsV1") == entry["fieldsV1"]:
            entry = old_entry
        new["metadata"]["managedFields"] = [*others, entry]
        return self._commit(res, old, new)

    def _entry(self, manager: str, config: Obj, paths: set[tuple[str, ...]]) -> Obj:
        return {
            "manager": manager,
            "operation": "Apply",
            "apiVersion": config.get("apiVersion"),
            "time": _now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": paths_to_fields_v1(paths),
        }

    def _delete(self, res: kmock.resource, ns: str | None, name: str, options: Any) -> Obj:
        old = self._existing(res, ns, name)
        options = options if isinstance(options, dict) else {}
        pre = options.get("preconditions") or {}
        current = old["metadata"]["resourceVersion"]
        if pre.get("resourceVersion") and pre["resourceVersion"] != current:
            raise ApiError(409, "Precondition failed: resourceVersion does not match")
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise ApiError(409, "Precondition failed: UID does not match")
        if old["metadata"].get("deletionTimestamp"):
            return old
        if old["metadata"].get("finalizers"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._store(res, new, "MODIFIED")
        orphan = options.get("propagationPolicy") == "Orphan"
        return self._finally_delete(res, old, orphan=orphan)

    def _finally_delete(self, res: kmock.resource, obj: Obj, *, orphan: bool = False) -> Obj:
        meta = obj["metadata"]
        key = (res, meta.get("namespace"), meta["name"])
        self.rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key].delete()
        self._uids.pop(meta["uid"], None)
        self._emit(res, "DELETED", gone)
        if res == kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"):
            self._crd_removed(obj)
        if not orphan:
            loop = asyncio.get_running_loop()
            loop.call_later(self.gc_delay, self._collect_garbage)
        return gone

    def _collect_garbage(self) -> None:
        """Delete objects whose every owner (by uid) is gone; cascades."""
        for (res, ns, name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
            orphaned = owners and not any(o.get("uid") in self._uids for o in owners)
            if orphaned and res in self.resources:
                self._delete(res, ns, name, {})

    # CRDs register resources in discovery, and are Established at once (a real API
    # server's establishing controller reports it moments later).
    def _crd_installed(self, crd: Obj) -> None:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        crd["status"] = {
            "acceptedNames": copy.deepcopy(names),
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": _now()}
                for t, r in (
                    ("NamesAccepted", "NoConflicts"),
                    ("Established", "InitialNamesAccepted"),
                )
            ],
        }
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            self.register(
                f"{spec['group']}/{version['name']}/{names['plural']}",
                names.get("kind", names["plural"]),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                status="status" in (version.get("subresources") or {}),
            )

    def _crd_removed(self, crd: Obj) -> None:
        spec = crd.get("spec", {})
        for version in spec.get("versions", []):
            self.unregister(f"{spec['group']}/{version['name']}/{spec['names']['plural']}")

    # -------------------------------------------------------------- HTTP fallbacks

    @staticmethod
    def _body(request: rendering.Request) -> Any:
        if request.data is not None and not isinstance(request.data, Mapping | list):
            return None
        if request.data is not None:
            return request.data
        if request.text:
            try:
                return json.loads(request.text)
            except ValueError:
                return yaml.safe_load(request.text)
        return None

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        obj = self._create(request.resource, request.namespace, copy.deepcopy(self._body(request)))
        return rendering.Response(status=201, payload=obj)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None and request.name is not None
        ctype = request.headers.get("Content-Type", "application/merge-patch+json")
        body = self._body(request)
        if ctype.startswith("application/apply-patch+yaml") and body is None and request.text:
            body = yaml.safe_load(request.text)
        return self._patch(
            request.resource,
            request.namespace,
            request.name,
            request.subresource,
            ctype,
            copy.deepcopy(body),
            request.params,
        )

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None and request.name is not None
        options = self._body(request) or {}
        if "propagationPolicy" in request.params:
            options = dict(options, propagationPolicy=request.params["propagationPolicy"])
        return self._delete(request.resource, request.namespace, request.name, options)


# ----------------------------------------------------------------------------- threading


class EmulatorThread:
    """Run a StrictEmulator with its HTTP server in a thread with its own event loop.

    ``call(fn, *args)`` runs ``fn`` inside the emulator's loop (thread-safe access).
    """

    def __init__(self, emulator: StrictEmulator | None = None) -> None:
        self.emulator = emulator or StrictEmulator()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surfaced by __enter__
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        assert self._loop is not None

        async def runner() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(30)

    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f)
        return path


_counter = itertools.count()
__all__ = ["ApiError", "EmulatorThread", "Fault", "StrictEmulator", "enums"]
