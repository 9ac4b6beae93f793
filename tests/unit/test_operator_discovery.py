"""Which optional kinds are served: from CRD events when they reported the kind, else
from (cached) discovery."""

from __future__ import annotations

from typing import Any

from mmo_operator.kube import Kube


class RecordingKube(Kube):
    """Answers discovery requests with ``served`` plurals and records every request."""

    def __init__(self, served: set[str]) -> None:
        super().__init__(api=object())  # type: ignore[arg-type]
        self.served = served
        self.requests: list[str] = []

    def request(self, method: str, path: str, **_: Any) -> Any:
        self.requests.append(f"{method} {path}")
        return {"resources": [{"name": plural} for plural in sorted(self.served)]}


def crd(*, established: bool = True, served: bool = True) -> dict[str, Any]:
    status = "True" if established else "False"
    return {
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"plural": "podmonitors", "kind": "PodMonitor"},
            "versions": [{"name": "v1", "served": served}],
        },
        "status": {"conditions": [{"type": "Established", "status": status}]},
    }


POD_MONITOR = ("monitoring.coreos.com/v1", "PodMonitor")


def test_an_established_crd_answers_without_discovery() -> None:
    kube = RecordingKube(served=set())
    kube.learn_crd(crd())
    assert kube.has_kind(*POD_MONITOR) is True
    assert kube.requests == []


def test_a_version_the_crd_does_not_serve_is_not_served() -> None:
    kube = RecordingKube(served={"podmonitors"})
    kube.learn_crd(crd(served=False))
    assert kube.has_kind(*POD_MONITOR) is False
    assert kube.requests == []


def test_a_deleted_crd_is_not_served_without_discovery() -> None:
    kube = RecordingKube(served={"podmonitors"})
    kube.learn_crd(crd())
    kube.learn_crd(crd(), deleted=True)
    assert kube.has_kind(*POD_MONITOR) is False
    assert kube.requests == []


def test_a_crd_not_established_leaves_the_answer_to_discovery() -> None:
    kube = RecordingKube(served=set())
    kube.learn_crd(crd())
    kube.learn_crd(crd(established=False))
    assert kube.has_kind(*POD_MONITOR) is False
    assert kube.requests == ["GET /apis/monitoring.coreos.com/v1"]


def test_kinds_no_crd_event_reported_are_discovered_once() -> None:
    kube = RecordingKube(served={"rayservices"})
    kube.learn_crd(crd())
    assert kube.has_kind("ray.io/v1", "RayService") is True
    assert kube.has_kind("ray.io/v1", "RayCluster") is False
    assert kube.requests == ["GET /apis/ray.io/v1"]
