"""PodMonitor ``NAME`` scraping Ray's Prometheus endpoint on every pod of the model.

Ray prefixes custom metrics with ``ray_``; the relabeling renames ``ray_(mmo_.*)`` to
``$1`` so that dashboards and alerts see ``mmo_*`` (README: Dashboards and alerts).
"""

from __future__ import annotations

from mmo_operator.api.v1alpha1 import MultimodalModel

from .common import MODEL_LABEL, Obj, metadata, podmonitor_name

METRICS_PORT_NAME = "metrics"


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
