"""Which nodes the GPU worker pods may run on.

By default a required node affinity on ``nvidia.com/gpu.product`` ``In`` every product
name GPU feature discovery publishes for the spec's ``gpuType`` (the SXM board and the
PCIe card where both exist); ``spec.resources.nodeSelector`` replaces it for clusters
that label their GPU nodes differently.
"""

from __future__ import annotations

from typing import Any

from mmo_operator.api.v1alpha1 import GpuType, Resources

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# nvidia.com/gpu.product values as GPU feature discovery writes them (the device name
# reported by NVML, spaces replaced by '-'), for every form factor of each gpuType.
GPU_PRODUCTS: dict[GpuType, tuple[str, ...]] = {
    "A100-40GB": ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"),
    "A100-80GB": ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"),
    "H100-80GB": ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"),
    "H200-141GB": ("NVIDIA-H200", "NVIDIA-H200-NVL"),
    "L40S-48GB": ("NVIDIA-L40S",),
}


def node_placement(resources: Resources) -> dict[str, Any]:
    """The pod spec fields that pick the worker nodes: ``nodeSelector`` or ``affinity``."""
    if resources.node_selector:
        return {"nodeSelector": dict(resources.node_selector)}
    term = {
        "matchExpressions": [
            {
                "key": GPU_PRODUCT_LABEL,
                "operator": "In",
                "values": list(GPU_PRODUCTS[resources.gpu_type]),
            }
        ]
    }
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        }
    }
