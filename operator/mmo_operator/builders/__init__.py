"""Desired children of a MultimodalModel, as plain dicts (pure: no API access).

``build_children`` is what the operator applies and what ``mmo render`` prints. Every
child carries the common labels, an owner reference to the MultimodalModel when its uid
is known (not under ``mmo render``) and a ``serving.mmo.dev/spec-hash`` annotation that
the operator compares with what it observes, so that an unchanged object costs no write.
"""

from __future__ import annotations

from mmo_operator.api.v1alpha1 import MultimodalModel
from mmo_serving.config import AppArgs, PlacementPlan

from .common import Obj, owner_reference, stamp
from .configmap import build_placement_configmap
from .networkpolicy import NetworkPeers, build_network_policies
from .pdb import build_worker_pdb
from .podmonitor import build_podmonitor
from .rayservice import build_rayservice
from .supernode import build_supernode


def _own(objs: list[Obj], model: MultimodalModel, uid: str | None) -> list[Obj]:
    if uid:
        for obj in objs:
            obj["metadata"]["ownerReferences"] = [owner_reference(model, uid)]
    return objs


def build_children(
    model: MultimodalModel,
    plan: PlacementPlan,
    *,
    args: AppArgs | None = None,
    uid: str | None = None,
    pod_monitor: bool = True,
    peers: NetworkPeers | None = None,
) -> list[Obj]:
    """Every child object, in the order to apply them (policies before pods).

    ``pod_monitor`` is False when the monitoring CRDs are absent; the PodMonitor is built
    only when ``spec.monitoring.podMonitor`` is set as well. ``peers``: the namespaces of
    KubeRay, the operator and monitoring, and the API server's addresses (``mmo operator
    --kuberay-namespace ... --apiserver-cidr``), for the NetworkPolicies.
    """
    if args is None:
        from .app_args import build_app_args

        args = build_app_args(model, plan)
    children: list[Obj] = [build_placement_configmap(model, plan, uid)]
    children += _own(build_network_policies(model, peers), model, uid)
    children.append(build_worker_pdb(model, uid))
    children.append(build_rayservice(model, args, uid))
    supernode = build_supernode(model, uid)  # federated mode only
    if supernode is not None:
        children.append(supernode)
    if pod_monitor and model.spec.monitoring.pod_monitor:
        children.append(build_podmonitor(model, uid))
    return [stamp(child) for child in children]


def child_key(obj: Obj) -> tuple[str, str, str]:
    """(apiVersion, kind, name) of a child: what identifies it within a namespace."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


__all__ = ["build_children", "child_key"]
