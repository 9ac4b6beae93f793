"""PodMonitor ``NAME`` scraping Ray's Prometheus endpoint on every pod of the model.

Ray prefixes custom metrics with ``ray_``; the relabeling renames ``ray_(mmo_.*)`` to
``$1`` so that dashboards and alerts see ``mmo_*`` (README: Dashboards and alerts). vLLM's engine
metrics (``ray_vllm_*``, recorded through Ray by Ray Serve LLM, labelled ``model_name``
and ``engine``) keep their names, as Ray's own LLM dashboards query them. Every series
gets a ``model`` label from the pod's ``serving.mmo.dev/model`` label, which dashboards
and alerts group by (Prometheus Operator adds ``namespace`` and ``pod`` itself).
"""

from __future__ import annotations

from mmo_operator.api.v1alpha1 import MultimodalModel

from .common import MODEL_LABEL, Obj, metadata, podmonitor_name

METRICS_PORT_NAME = "metrics"


def pod_label_meta(label: str) -> str:
    """Prometheus' Kubernetes discovery name of a pod label."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in label)


def build_podmonitor(model: MultimodalModel, uid: str | None = None) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata(model, podmonitor_name(model), uid),
        "spec": {
            "selector": {"matchLabels": {MODEL_LABEL: model.name}},
            "namespaceSelector": {"matchNames": [model.namespace]},
            "podMetricsEndpoints": [
                {
                    "port": METRICS_PORT_NAME,
                    "path": "/metrics",
                    "interval": "15s",
                    "relabelings": [
                        {
                            "sourceLabels": [pod_label_meta(MODEL_LABEL)],
                            "targetLabel": "model",
                            "action": "replace",
                        }
                    ],
                    "metricRelabelings": [
                        {
                            "sourceLabels": ["__name__"],
                            "regex": "ray_(mmo_.*)",
                            "targetLabel": "__name__",
                            "replacement": "$1",
                            "action": "replace",
                        }
                    ],
                }
            ],
        },
    }
