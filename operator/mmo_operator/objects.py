"""Obj: a Kubernetes object (or a part of one) as a plain dict, as read from and written
to the API server."""

from typing import Any

Obj = dict[str, Any]
