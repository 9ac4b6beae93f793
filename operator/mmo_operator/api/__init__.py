"""The MultimodalModel API (pure: pydantic and PyYAML only)."""

from .problems import InvalidResource, Problem
from .v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Architecture,
    MultimodalModel,
    MultimodalModelSpec,
    MultimodalModelStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Architecture",
    "InvalidResource",
    "MultimodalModel",
    "MultimodalModelSpec",
    "MultimodalModelStatus",
    "Problem",
]
