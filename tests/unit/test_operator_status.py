"""Status conditions computed from observations (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmo_operator.builders.app_args import plan_and_app_args
from mmo_operator.status import Observation, compute_status, condition, is_ready, unparsed_status
from mmo_operator.validation import validate

TINY = Path(__file__).resolve().parents[1] / "k8s" / "data" / "tiny.yaml"


def _setup() -> tuple[Any, Observation]:
    v = validate(yaml.safe_load(TINY.read_text()))
    plan, _ = plan_and_app_args(v)
    obs = Observation(generation=3, capacity=v.capacity, plan=plan, network_policies=5)
    return v.model, obs


def _rayservice(ready: str, app: str) -> dict[str, Any]:
    return {
        "status": {
            "conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": "m"}],
            "activeServiceStatus": {"applicationStatuses": {"tiny": {"status": app}}},
        }
    }


def test_ready_follows_kuberay_and_the_application() -> None:
    model, obs = _setup()
    obs.rayservice = _rayservice("True", "RUNNING")
    status = compute_status(model, obs, now="t0")
    assert is_ready(status)
    assert status["observedGeneration"] == 3
    assert status["endpoint"] == "http://tiny-serve-svc.ns1.svc:8000"
    obs.rayservice = _rayservice("True", "DEPLOYING")
    cond = condition(compute_status(model, obs, now="t0"), "Ready")
    assert cond is not None and cond["reason"] == "ApplicationNotRunning"
    assert "DEPLOYING" in cond["message"]
    obs.rayservice = _rayservice("True", "UNHEALTHY")
    degraded = condition(compute_status(model, obs, now="t0"), "Degraded")
    assert degraded is not None and degraded["status"] == "True"


def test_missing_kuberay_and_monitoring_are_explained() -> None:
    model, obs = _setup()
    obs.kuberay_installed = False
    obs.monitoring_installed = False
    status = compute_status(model, obs, now="t0")
    ready = condition(status, "Ready")
    assert ready is not None and ready["message"].startswith("KubeRay CRDs not installed")
    degraded = condition(status, "Degraded")
    assert degraded is not None and degraded["reason"] == "PodMonitorSkipped"


def test_invalid_spec_names_the_problem() -> None:
    model, obs = _setup()
    obs.problems = ["spec.autoscaling.maxReplicas: must be >= minReplicas"]
    planned = condition(compute_status(model, obs, now="t0"), "Planned")
    assert planned is not None and planned["status"] == "False"
    assert "spec.autoscaling.maxReplicas" in planned["message"]
    policy = condition(compute_status(model, obs, now="t0"), "PolicyEnforced")
    assert policy is not None and policy["status"] == "False"
    assert policy["reason"] == "InvalidSpec"
    assert policy["message"] == "nothing is deployed while the spec is invalid"


def test_transition_times_move_only_when_a_status_changes() -> None:
    model, obs = _setup()
    first = compute_status(model, obs, now="t0")
    again = compute_status(model, obs, previous=first, now="t1")
    assert again == first, "recomputing an unchanged status gives the same dict"
    obs.rayservice = _rayservice("True", "RUNNING")
    later = compute_status(model, obs, previous=first, now="t2")
    ready = condition(later, "Ready")
    planned = condition(later, "Planned")
    assert ready is not None and ready["lastTransitionTime"] == "t2"
    assert planned is not None and planned["lastTransitionTime"] == "t0"


def test_policy_condition_lists_the_active_layers() -> None:
    model, obs = _setup()
    cond = condition(compute_status(model, obs, now="t0"), "PolicyEnforced")
    assert cond is not None and cond["status"] == "True"
    assert "network (5 NetworkPolicies)" in cond["message"] and "audit" in cond["message"]
    obs.network_policies = 0
    off = condition(compute_status(model, obs, now="t0"), "PolicyEnforced")
    assert off is not None and off["reason"] == "NetworkPoliciesMissing"


def test_policy_condition_says_when_the_autoscaler_is_cut_off() -> None:
    model, obs = _setup()
    cond = condition(compute_status(model, obs, now="t0"), "PolicyEnforced")
    assert cond is not None and cond["status"] == "True"
    assert "Ray autoscaler cannot reach the API server under default-deny" in cond["message"]
    assert "--apiserver-cidr" in cond["message"]
    obs.apiserver_egress = True
    allowed = condition(compute_status(model, obs, now="t0"), "PolicyEnforced")
    assert allowed is not None and "autoscaler" not in allowed["message"]
    assert allowed["reason"] == cond["reason"]


def test_a_failed_write_shows_in_reconciled_not_in_ready() -> None:
    model, obs = _setup()
    obs.rayservice = _rayservice("True", "RUNNING")
    obs.apply_error = "reconciling ns1/tiny: PATCH ...: injected fault 500 (retrying)"
    status = compute_status(model, obs, now="t0")
    assert is_ready(status), "the model still serves"
    done = condition(status, "Reconciled")
    assert done is not None and done["status"] == "False" and done["reason"] == "ApplyFailed"
    assert "injected fault 500" in done["message"]
    obs.apply_error = None
    done = condition(compute_status(model, obs, now="t0"), "Reconciled")
    assert done is not None and done["status"] == "True"


def _generation(rs: dict[str, Any], generation: int, observed: int) -> dict[str, Any]:
    rs["metadata"] = {"generation": generation}
    rs["status"]["observedGeneration"] = observed
    return rs


def test_progressing_follows_the_rayservice_generation_and_cluster_changes() -> None:
    model, obs = _setup()
    obs.rayservice = None
    cond = condition(compute_status(model, obs, now="t0"), "Progressing")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "Creating"
    obs.rayservice = _generation(_rayservice("True", "RUNNING"), 2, 2)
    cond = condition(compute_status(model, obs, now="t0"), "Progressing")
    assert cond is not None and cond["status"] == "False" and "generation 2" in cond["message"]
    obs.rayservice = _generation(_rayservice("True", "RUNNING"), 3, 2)
    cond = condition(compute_status(model, obs, now="t0"), "Progressing")
    assert cond is not None and cond["reason"] == "UpdatePending"
    assert "generation 3" in cond["message"] and "reports generation 2" in cond["message"]
    obs.cluster_change_generation = 3  # the operator applied a new cluster config
    status = compute_status(model, obs, now="t0")
    cond = condition(status, "Progressing")
    assert cond is not None and cond["reason"] == "ClusterUpgrade"
    assert is_ready(status), "the old cluster serves meanwhile"
    obs.rayservice = _generation(_rayservice("True", "RUNNING"), 3, 3)
    obs.rayservice["status"]["pendingServiceStatus"] = {"rayClusterName": "tiny-raycluster-b"}
    cond = condition(compute_status(model, obs, now="t0"), "Progressing")
    assert cond is not None and cond["reason"] == "ClusterUpgrade", "the new one not serving yet"
    del obs.rayservice["status"]["pendingServiceStatus"]
    cond = condition(compute_status(model, obs, now="t0"), "Progressing")
    assert cond is not None and cond["status"] == "False"


def test_a_spec_that_does_not_parse_gets_a_status() -> None:
    obs = Observation(generation=1, problems=["spec.resources.gpuType: Input should be ..."])
    status = unparsed_status(obs, now="t0")
    planned = condition(status, "Planned")
    assert planned is not None and planned["reason"] == "InvalidSpec"
    assert planned["message"] == "invalid spec: spec.resources.gpuType: Input should be ..."
    assert status["observedGeneration"] == 1 and not is_ready(status)
    again = unparsed_status(obs, previous=status, now="t1")
    assert again == status, "recomputing it changes nothing (no second write)"


def test_policy_condition_says_what_admission_could_not_check() -> None:
    model, obs = _setup()
    obs.egress_notes = ["hybrid endpoint llm.example.com is a DNS name: admission cannot ..."]
    cond = condition(compute_status(model, obs, now="t0"), "PolicyEnforced")
    assert cond is not None and cond["status"] == "True"
    assert cond["message"].endswith(
        "; hybrid endpoint llm.example.com is a DNS name: admission cannot ..."
    )
