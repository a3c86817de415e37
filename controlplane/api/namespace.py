"""core/v1 Namespace (cluster-scoped). `default`, `kube-system`, `kube-public` and
`kube-node-lease` always exist."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .meta import ApiObject

BUILTIN_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


@dataclass
class Namespace(ApiObject):
    KIND: ClassVar[str] = "Namespace"
    RESOURCE: ClassVar[str] = "namespaces"
    NAMESPACED: ClassVar[bool] = False

    spec: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
