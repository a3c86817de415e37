"""core/v1 Pod: the parts services need (labels, container ports, IP, node, readiness).

The runtime (the lab) fills `status.phase`, `status.pod_ip`, `spec.node_name` and the Ready
condition; `metadata.deletion_timestamp` marks a terminating pod.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .codec import extra_field, jfield
from .meta import ApiObject

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
UNKNOWN = "Unknown"
POD_PHASES = (PENDING, RUNNING, SUCCEEDED, FAILED, UNKNOWN)


@dataclass
class ContainerPort:
    name: str | None = None
    host_port: int | None = None
    container_port: int | None = None
    protocol: str | None = None
    host_ip: str | None = jfield("hostIP")
    extra: dict[str, Any] = extra_field()


@dataclass
class Container:
    name: str | None = None
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    ports: list[ContainerPort] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class PodDNSConfigOption:
    name: str | None = None
    value: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class PodDNSConfig:
    """What the kubelet adds to (dnsPolicy ClusterFirst/Default) or puts alone in (None)
    the pod's resolv.conf."""

    nameservers: list[str] | None = None
    searches: list[str] | None = None
    options: list[PodDNSConfigOption] | None = None
    extra: dict[str, Any] = extra_field()


DNS_CLUSTER_FIRST = "ClusterFirst"
DNS_CLUSTER_FIRST_WITH_HOST_NET = "ClusterFirstWithHostNet"
DNS_DEFAULT = "Default"
DNS_NONE = "None"
DNS_POLICIES = (DNS_CLUSTER_FIRST, DNS_CLUSTER_FIRST_WITH_HOST_NET, DNS_DEFAULT, DNS_NONE)


@dataclass
class PodSpec:
    containers: list[Container] | None = None
    node_name: str | None = None
    hostname: str | None = None
    host_network: bool | None = None   # the lab runs it in its node's namespace and cgroup
    subdomain: str | None = None
    dns_policy: str | None = None
    dns_config: PodDNSConfig | None = None
    restart_policy: str | None = None
    termination_grace_period_seconds: int | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class PodCondition:
    type: str | None = None
    status: str | None = None
    last_transition_time: str | None = None
    reason: str | None = None
    message: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class ContainerStatus:
    name: str | None = None
    ready: bool | None = None
    restart_count: int | None = None
    image: str | None = None
    started: bool | None = None
    state: dict[str, Any] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class PodIP:
    ip: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class PodStatus:
    phase: str | None = None
    conditions: list[PodCondition] | None = None
    pod_ip: str | None = jfield("podIP")
    pod_ips: list[PodIP] | None = jfield("podIPs")
    host_ip: str | None = jfield("hostIP")
    start_time: str | None = None
    container_statuses: list[ContainerStatus] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class Pod(ApiObject):
    KIND: ClassVar[str] = "Pod"
    RESOURCE: ClassVar[str] = "pods"

    spec: PodSpec = field(default_factory=PodSpec)
    status: PodStatus = field(default_factory=PodStatus)

    @property
    def phase(self) -> str:
        return self.status.phase or PENDING

    @property
    def ip(self) -> str | None:
        return self.status.pod_ip or None

    @property
    def node_name(self) -> str | None:
        return self.spec.node_name or None

    @property
    def ready(self) -> bool:
        """The Ready condition is True (podutil.IsPodReady)."""
        for cond in self.status.conditions or []:
            if cond.type == "Ready":
                return cond.status == "True"
        return False

    @property
    def containers(self) -> list[Container]:
        return self.spec.containers or []

    def find_container_port(self, name: str) -> ContainerPort | None:
        """The container port called `name` (how a named targetPort resolves for this pod)."""
        for container in self.containers:
            for port in container.ports or []:
                if port.name == name:
                    return port
        return None
