"""Run ``mmo operator`` as a subprocess against the strict emulator, and play KubeRay."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import yaml
from kube_emulator import EmulatorThread

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "hack" / "schemas"
DATA = Path(__file__).parent / "data"

MMM = "serving.mmo.dev/v1alpha1/multimodalmodels"
RAYSERVICES = "ray.io/v1/rayservices"
RAYCLUSTERS = "ray.io/v1/rayclusters"
PODMONITORS = "monitoring.coreos.com/v1/podmonitors"
CONFIGMAPS = "v1/configmaps"
PDBS = "policy/v1/poddisruptionbudgets"
NETPOLS = "networking.k8s.io/v1/networkpolicies"
EVENTS = "v1/events"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"


def load_crd(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs[0]


def mmm_crd() -> dict[str, Any]:
    return load_crd(REPO / "manifests" / "crds" / "serving.mmo.dev_multimodalmodels.yaml")


def kuberay_crd() -> dict[str, Any]:
    return load_crd(SCHEMAS / "ray.io_rayservices.v1.7.0.yaml")


def raycluster_crd() -> dict[str, Any]:
    """A small stand-in for KubeRay's RayCluster CRD (hack/schemas vendors none)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "rayclusters.ray.io"},
        "spec": {
            "group": "ray.io",
            "scope": "Namespaced",
            "names": {"plural": "rayclusters", "kind": "RayCluster", "singular": "raycluster"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def podmonitor_crd() -> dict[str, Any]:
    return load_crd(SCHEMAS / "monitoring.coreos.com_podmonitors.yaml")


def peering_crds() -> list[dict[str, Any]]:
    out = []
    for scope, plural, kind in (
        ("Cluster", "clusterkopfpeerings", "ClusterKopfPeering"),
        ("Namespaced", "kopfpeerings", "KopfPeering"),
    ):
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"plural": plural, "kind": kind, "singular": kind.lower()},
                    "versions": [{"name": "v1", "served": True, "storage": True}],
                },
            }
        )
    return out


def model_doc(name: str = "tiny", namespace: str = "ns1", **spec_changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load((DATA / "tiny.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    for path, value in spec_changes.items():
        cur = doc["spec"]
        parts = path.split("__")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
    return doc


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Cluster:
    """The emulator with the CRDs installed, and helpers for scenarios."""

    def __init__(self, thread: EmulatorThread) -> None:
        self.thread = thread
        self.emu = thread.emulator

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.thread.call(fn, *args, **kwargs)

    def install(self, crd: dict[str, Any]) -> None:
        self.call(self.emu.create, CRDS, copy.deepcopy(crd))

    def uninstall(self, crd: dict[str, Any]) -> None:
        self.call(self.emu.delete, CRDS, None, crd["metadata"]["name"])

    def get(self, resource: str, name: str, namespace: str | None = "ns1") -> Any:
        return self.call(self.emu.get, resource, namespace, name)

    def list(self, resource: str, namespace: str | None = "ns1") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call(self.emu.list, resource, namespace)
        return result

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call(self.emu.create, resource, copy.deepcopy(obj))
        return result

    def patch(
        self,
        resource: str,
        name: str,
        patch: dict[str, Any],
        namespace: str = "ns1",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            self.emu.patch, resource, namespace, name, patch, subresource=subresource
        )
        return result

    def delete(self, resource: str, name: str, namespace: str = "ns1") -> None:
        self.call(self.emu.delete, resource, namespace, name)

    def children(self, name: str = "tiny", namespace: str = "ns1") -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for res in (CONFIGMAPS, PDBS, NETPOLS, RAYSERVICES, PODMONITORS):
            if self.call(lambda r=res: r in self.emu.resources):
                items = [
                    o["metadata"]["name"]
                    for o in self.list(res, namespace)
                    if (o["metadata"].get("labels") or {}).get("serving.mmo.dev/model") == name
                ]
                if items:
                    out[res] = sorted(items)
        return out

    def condition(self, name: str, ctype: str, namespace: str = "ns1") -> dict[str, Any] | None:
        obj = self.get(MMM, name, namespace)
        for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
            if cond["type"] == ctype:
                return dict(cond)
        return None

    def create_raycluster(
        self,
        name: str,
        suffix: str = "abcde",
        namespace: str = "ns1",
        *,
        replicas: int | None = None,
    ) -> dict[str, Any]:
        """Create the RayCluster of a RayService as KubeRay does: named after it, owned by
        it, with its rayClusterConfig as spec (the RayCluster CRD must be installed);
        ``replicas``: the worker groups' count, as the autoscaler may have set it."""
        rs = self.get(RAYSERVICES, name, namespace)
        assert rs is not None, f"RayService {name} does not exist"
        owner = {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "name": name,
            "uid": rs["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        obj = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {
                "name": f"{name}-raycluster-{suffix}",
                "namespace": namespace,
                "labels": {"ray.io/originated-from-crd": "RayService"},
                "ownerReferences": [owner],
            },
            "spec": copy.deepcopy(rs["spec"]["rayClusterConfig"]),
        }
        if replicas is not None:
            for group in obj["spec"].get("workerGroupSpecs") or []:
                group["replicas"] = replicas
        return self.create(RAYCLUSTERS, obj)

    def play_kuberay(
        self,
        name: str,
        *,
        ready: bool = True,
        app_status: str = "RUNNING",
        namespace: str = "ns1",
        cluster: str | None = None,
        pending_cluster: str | None = None,
    ) -> None:
        """Report on a RayService as KubeRay does (status subresource, with the
        generation it acted on); ``cluster`` and ``pending_cluster`` name the active and
        pending RayClusters."""
        rs = self.get(RAYSERVICES, name, namespace) or {}
        status: dict[str, Any] = {
            "observedGeneration": rs.get("metadata", {}).get("generation", 1),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "NonZeroServeEndpoints" if ready else "ZeroServeEndpoints",
                    "message": "" if ready else "no Serve endpoint is ready",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "activeServiceStatus": {
                "rayClusterName": cluster or f"{name}-raycluster-abcde",
                "applicationStatuses": {name: {"status": app_status, "message": ""}},
            },
            "numServeEndpoints": 1 if ready else 0,
        }
        # a merge patch: None removes the pending cluster KubeRay reported before
        status["pendingServiceStatus"] = (
            {"rayClusterName": pending_cluster} if pending_cluster else None
        )
        self.patch(RAYSERVICES, name, {"status": status}, namespace, subresource="status")

    def versions(self, resource: str, name: str, namespace: str = "ns1") -> list[dict[str, Any]]:
        """Every version the object has had (its history), oldest first."""

        def read() -> list[dict[str, Any]]:
            obj = self.emu.objects[kmock.resource(resource), namespace, name]
            return [copy.deepcopy(dict(v.raw)) for v in obj.history if v is not None]

        result: list[dict[str, Any]] = self.call(read)
        return result

    def request_mark(self) -> int:
        count: int = self.call(lambda: self.emu.request_count)
        return count

    def writes_since(self, mark: int, *, exclude_events: bool = True) -> list[str]:
        reqs = self.call(self.emu.writes, mark)
        out = []
        for r in reqs:
            if exclude_events and r.resource is not None and r.resource.plural == "events":
                continue
            out.append(f"{r.method.value} {r.url.path}")
        return out

    def requests_since(self, mark: int) -> list[str]:
        reqs = self.call(lambda: self.emu.request_log[mark:])
        return [f"{r.method.value} {r.url.path}?{r.url.query_string}" for r in reqs]

    def events(self, namespace: str = "ns1") -> list[dict[str, Any]]:
        return self.list(EVENTS, namespace)


class OperatorProcess:
    """``mmo operator`` in a subprocess with a kubeconfig pointing at the emulator."""

    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        webhook: bool = False,
    ) -> None:
        self.log_path = log_path
        cmd = [
            sys.executable,
            "-m",
            "mmo_operator.cli",
            "operator",
            "-A",
            "--metrics-port",
            "0",
            "--resync-seconds",
            "3",
            *extra,
        ]
        if not webhook:
            cmd.append("--no-webhook")
        if "--peering" not in extra:
            cmd.append("--standalone")
        full_env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
