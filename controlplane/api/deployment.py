"""apps/v1 Deployment and the label selector it carries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .codec import extra_field
from .meta import ApiObject, ObjectMeta
from .pod import PodSpec


@dataclass
class LabelSelectorRequirement:
    key: str | None = None
    operator: str | None = None
    values: list[str] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class LabelSelectorSpec:
    """metav1.LabelSelector (`matchLabels` + `matchExpressions`)."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class PodTemplateSpec:
    metadata: ObjectMeta = field(default_factory=ObjectMeta)
    spec: PodSpec = field(default_factory=PodSpec)
    extra: dict[str, Any] = extra_field()


@dataclass
class DeploymentSpec:
    replicas: int | None = None
    selector: LabelSelectorSpec | None = None
    template: PodTemplateSpec = field(default_factory=PodTemplateSpec)
    strategy: dict[str, Any] | None = None
    min_ready_seconds: int | None = None
    revision_history_limit: int | None = None
    progress_deadline_seconds: int | None = None
    paused: bool | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class DeploymentStatus:
    observed_generation: int | None = None
    replicas: int | None = None
    updated_replicas: int | None = None
    ready_replicas: int | None = None
    available_replicas: int | None = None
    unavailable_replicas: int | None = None
    conditions: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class Deployment(ApiObject):
    KIND: ClassVar[str] = "Deployment"
    GROUP: ClassVar[str] = "apps"
    RESOURCE: ClassVar[str] = "deployments"

    spec: DeploymentSpec = field(default_factory=DeploymentSpec)
    status: DeploymentStatus = field(default_factory=DeploymentStatus)

    @property
    def replicas(self) -> int:
        return 1 if self.spec.replicas is None else self.spec.replicas
