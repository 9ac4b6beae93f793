"""Failures: missing CRDs, injected API errors, expired watches, restarts, peering."""

from __future__ import annotations

from collections.abc import Callable

from operator_harness import (
    CONFIGMAPS,
    MMM,
    NETPOLS,
    PDBS,
    PODMONITORS,
    RAYSERVICES,
    Cluster,
    OperatorProcess,
    kuberay_crd,
    model_doc,
    peering_crds,
    podmonitor_crd,
    wait_for,
)

from mmo_operator.kube import USER_AGENT

StartOperator = Callable[..., OperatorProcess]


def _status(cluster: Cluster, ctype: str, name: str = "tiny") -> str | None:
    return (cluster.condition(name, ctype) or {}).get("status")


def test_missing_kuberay_crds_then_installed(
    bare_cluster: Cluster, start_operator: StartOperator
) -> None:
    cluster = bare_cluster
    start_operator()
    cluster.create(MMM, model_doc())
    ready = wait_for(
        "Ready=False KubeRayNotInstalled",
        lambda: (
            (c := cluster.condition("tiny", "Ready")) and c["reason"] == "KubeRayNotInstalled" and c
        ),
    )
    assert ready["message"].startswith("KubeRay CRDs not installed")
    degraded = cluster.condition("tiny", "Degraded")
    assert degraded is not None and degraded["reason"] == "PodMonitorSkipped"
    assert "PodMonitor CRD is not installed" in degraded["message"]
    # what does not need KubeRay is there already: policies before pods
    assert cluster.get(CONFIGMAPS, "tiny-placement") is not None
    assert cluster.get(PDBS, "tiny-workers") is not None
    assert cluster.get(NETPOLS, "tiny-network") is not None

    cluster.install(kuberay_crd())
    wait_for(
        "the RayService after KubeRay is installed",
        lambda: cluster.get(RAYSERVICES, "tiny"),
        timeout=30,
    )
    cluster.install(podmonitor_crd())
    wait_for(
        "the PodMonitor after prometheus-operator is installed",
        lambda: cluster.get(PODMONITORS, "tiny"),
        timeout=30,
    )
    cluster.play_kuberay("tiny")
    wait_for("Ready", lambda: _status(cluster, "Ready") == "True", timeout=30)
    wait_for("not Degraded", lambda: _status(cluster, "Degraded") == "False", timeout=30)


def test_a_crd_installed_later_needs_no_discovery_request(
    bare_cluster: Cluster, start_operator: StartOperator
) -> None:
    """The CRD event says the kind is served: the reconcile it triggers builds the
    PodMonitor without asking discovery again."""
    cluster = bare_cluster
    cluster.install(kuberay_crd())
    start_operator()
    cluster.create(MMM, model_doc())
    wait_for(
        "Degraded PodMonitorSkipped",
        lambda: (cluster.condition("tiny", "Degraded") or {}).get("reason") == "PodMonitorSkipped",
    )
    mark = cluster.request_mark()
    cluster.install(podmonitor_crd())
    wait_for("the PodMonitor", lambda: cluster.get(PODMONITORS, "tiny"), timeout=30)
    ours = cluster.call(
        lambda: [
            f"{r.method.value} {r.url.path}"
            for r in cluster.emu.request_log[mark:]
            if r.headers.get("User-Agent") == USER_AGENT
        ]
    )
    assert "PATCH /apis/monitoring.coreos.com/v1/namespaces/ns1/podmonitors/tiny" in ours
    assert "GET /apis/monitoring.coreos.com/v1" not in ours  # kopf's own rescan may ask


def test_injected_409_429_500_are_retried(cluster: Cluster, start_operator: StartOperator) -> None:
    emu = cluster.emu
    faults = [
        cluster.call(emu.inject, 409, count=2, method="PATCH", resource=RAYSERVICES),
        cluster.call(emu.inject, 429, count=1, method="PATCH", resource=CONFIGMAPS, retry_after=1),
        cluster.call(emu.inject, 500, count=2, method="PATCH", resource=MMM, subresource="status"),
        cluster.call(emu.inject, 500, count=1, method="GET", resource=PDBS),
    ]
    start_operator()
    cluster.create(MMM, model_doc())
    wait_for(
        "the RayService despite the faults", lambda: cluster.get(RAYSERVICES, "tiny"), timeout=60
    )
    cluster.play_kuberay("tiny")
    wait_for("Ready despite the faults", lambda: _status(cluster, "Ready") == "True", timeout=60)
    # the GET is a list, which the first reconciles skip: the resync's hits it
    wait_for("every injected fault hit", lambda: [f.hits for f in faults] == [2, 1, 2, 1])
    assert cluster.get(MMM, "tiny")["status"]["observedGeneration"] == 1


def test_a_failing_write_is_shown_in_status_until_it_succeeds(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    """A denied or failing write (admission policy, quota, server error) is retried and
    shown in the Reconciled condition meanwhile, instead of an empty or stale status."""
    emu = cluster.emu
    fault = cluster.call(emu.inject, 500, count=10_000, method="PATCH", resource=PDBS)
    start_operator()
    cluster.create(MMM, model_doc())

    def failing() -> bool:
        done = cluster.condition("tiny", "Reconciled") or {}
        return done.get("reason") == "ApplyFailed" and "(retrying)" in done.get("message", "")

    # generous: the retries back off to 4 s, but a loaded CI machine stretches each step
    wait_for("Reconciled=False, ApplyFailed in status", failing, timeout=60)
    cluster.call(emu.faults.remove, fault)
    wait_for("the PDB once writes succeed", lambda: cluster.get(PDBS, "tiny-workers"), timeout=60)
    cluster.play_kuberay("tiny")
    wait_for("Ready after the fault", lambda: _status(cluster, "Ready") == "True", timeout=60)
    assert _status(cluster, "Reconciled") == "True"


def test_watch_410_is_survived(cluster: Cluster, start_operator: StartOperator) -> None:
    op = start_operator()
    cluster.create(MMM, model_doc())
    wait_for("the RayService", lambda: cluster.get(RAYSERVICES, "tiny"))
    mark = cluster.request_mark()
    cluster.call(cluster.emu.expire_watches)  # every open watch gets ERROR 410 Gone

    def relisted() -> bool:  # kopf answers a 410 with a fresh list, then a new watch
        reqs = cluster.requests_since(mark)
        return any("/multimodalmodels?" in r and "watch=true" not in r for r in reqs)

    wait_for("kopf to list again after the 410", relisted, timeout=20)
    cluster.patch(MMM, "tiny", {"spec": {"batching": {"maxBatchSize": 24}}})
    wait_for(
        "the change handled after the 410",
        lambda: (
            "maxBatchSize: 24"
            in (cluster.get(RAYSERVICES, "tiny") or {}).get("spec", {}).get("serveConfigV2", "")
        ),
        timeout=30,
    )
    assert op.alive()


def test_operator_restart_while_objects_change(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    first = start_operator()
    cluster.create(MMM, model_doc("a"))
    cluster.create(MMM, model_doc("gone"))
    wait_for("a's RayService", lambda: cluster.get(RAYSERVICES, "a"))
    wait_for("gone's RayService", lambda: cluster.get(RAYSERVICES, "gone"))
    first.stop()
    # while no operator runs: change a, create b, delete gone (held by the finalizer)
    cluster.patch(MMM, "a", {"spec": {"batching": {"maxBatchSize": 40}}})
    cluster.create(MMM, model_doc("b"))
    cluster.delete(MMM, "gone")
    assert cluster.get(MMM, "gone")["metadata"]["deletionTimestamp"]
    cluster.call(cluster.emu.prune_history)
    start_operator()
    wait_for("b's RayService", lambda: cluster.get(RAYSERVICES, "b"), timeout=40)
    wait_for(
        "a updated",
        lambda: (
            "maxBatchSize: 40"
            in (cluster.get(RAYSERVICES, "a") or {}).get("spec", {}).get("serveConfigV2", "")
        ),
        timeout=40,
    )
    wait_for("gone released", lambda: cluster.get(MMM, "gone") is None, timeout=40)
    wait_for("gone's children removed", lambda: cluster.children("gone") == {}, timeout=20)


def test_two_replicas_with_peering_survive_the_leader_being_killed(
    cluster: Cluster, start_operator: StartOperator
) -> None:
    for crd in peering_crds():
        cluster.install(crd)
    cluster.create(
        "kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "mmo"}},
    )
    peering = ("--peering", "mmo", "--peering-lifetime", "4")

    def peers() -> int:
        obj = cluster.get("kopf.dev/v1/clusterkopfpeerings", "mmo", None) or {}
        return len(obj.get("status") or {})

    leader = start_operator(*peering, "--priority", "100")
    wait_for("the leader in the peering object", lambda: peers() == 1, timeout=40)
    wait_for("the leader to be active", lambda: "Resuming operations" in leader.log())
    standby = start_operator(*peering, "--priority", "10")
    wait_for("both replicas in the peering object", lambda: peers() == 2, timeout=40)
    cluster.create(MMM, model_doc("one"))
    wait_for("one's RayService", lambda: cluster.get(RAYSERVICES, "one"), timeout=40)
    wait_for("the leader to handle one", lambda: "Creation is processed" in leader.log())
    assert "is processed" not in standby.log(), "the standby stays paused"
    leader.kill()
    cluster.create(MMM, model_doc("two"))
    wait_for(
        "two's RayService from the standby", lambda: cluster.get(RAYSERVICES, "two"), timeout=60
    )
    wait_for("the standby to take over", lambda: "is processed" in standby.log())
