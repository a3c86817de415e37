"""ObjectMeta, owner references, timestamps and the ApiObject base every kind extends."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .codec import decode, encode, extra_field


@dataclass
class OwnerReference:
    api_version: str | None = None
    kind: str | None = None
    name: str | None = None
    uid: str | None = None
    controller: bool | None = None
    block_owner_deletion: bool | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class ObjectMeta:
    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    owner_references: list[OwnerReference] | None = None
    finalizers: list[str] | None = None
    extra: dict[str, Any] = extra_field()

    def controller_ref(self) -> OwnerReference | None:
        """The owner reference marked `controller: true`, if any."""
        for ref in self.owner_references or []:
            if ref.controller:
                return ref
        return None


@dataclass
class ApiObject:
    """Base of all kinds. Subclasses set the class constants and add spec/status fields.

    KIND/GROUP/VERSION identify the type, RESOURCE is the plural used in URLs and messages
    (`services "x" not found`), NAMESPACED says whether objects live in a namespace.
    """

    KIND: ClassVar[str] = ""
    GROUP: ClassVar[str] = ""
    VERSION: ClassVar[str] = "v1"
    RESOURCE: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = True

    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta = field(default_factory=ObjectMeta)
    extra: dict[str, Any] = extra_field()

    @classmethod
    def api_version_string(cls) -> str:
        return f"{cls.GROUP}/{cls.VERSION}" if cls.GROUP else cls.VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        obj = decode(cls, data)
        obj.api_version = obj.api_version or cls.api_version_string()
        obj.kind = cls.KIND
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = encode(self)
        out["apiVersion"] = self.api_version or self.api_version_string()
        out["kind"] = self.KIND
        out.setdefault("metadata", {})
        return out

    # Identity helpers -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "" if self.NAMESPACED else ""

    @property
    def key(self) -> str:
        """`namespace/name` (or `name` for cluster-scoped kinds)."""
        return f"{self.namespace}/{self.name}" if self.NAMESPACED else self.name

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels or {}

    @property
    def annotations(self) -> dict[str, str]:
        return self.metadata.annotations or {}

    @property
    def resource_version(self) -> int:
        return int(self.metadata.resource_version or 0)

    @property
    def terminating(self) -> bool:
        return self.metadata.deletion_timestamp is not None


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def format_timestamp(ts: _dt.datetime) -> str:
    """RFC 3339 with second precision, as Kubernetes writes metav1.Time."""
    return ts.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> _dt.datetime:
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    ts = _dt.datetime.fromisoformat(text)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=_dt.timezone.utc)
    return ts
