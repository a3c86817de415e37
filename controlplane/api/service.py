"""core/v1 Service.

The agent reads these: `spec.type`, `spec.cluster_ip` ("None" = headless), `spec.ports`
(each with `name`, `port`, `protocol`, `target_port`, `node_port`), `spec.session_affinity`
and `affinity_timeout_seconds`, the traffic policies, `spec.external_ips`,
`status.load_balancer.ingress`, and `annotations`/`labels` on the object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .codec import IntOrString, extra_field, jfield
from .meta import ApiObject

CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"
LOAD_BALANCER = "LoadBalancer"
EXTERNAL_NAME = "ExternalName"
SERVICE_TYPES = (CLUSTER_IP, EXTERNAL_NAME, LOAD_BALANCER, NODE_PORT)

AFFINITY_NONE = "None"
AFFINITY_CLIENT_IP = "ClientIP"
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400

POLICY_CLUSTER = "Cluster"
POLICY_LOCAL = "Local"
# spec.trafficDistribution: the EndpointSlice controller's cue to write topology hints,
# which the proxies follow (agent/topology.py)
TRAFFIC_DISTRIBUTIONS = ("PreferClose", "PreferSameZone", "PreferSameNode")

HEADLESS = "None"
# status.loadBalancer.ingress[].ipMode: VIP, traffic arrives addressed to the IP (the node
# serves it); Proxy, the load balancer proxies to the nodes (nothing to serve at the IP)
IP_MODE_VIP = "VIP"
PROTOCOLS = ("SCTP", "TCP", "UDP")

# Services with either label are not proxied (kube-proxy ignores them).
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
# The older way to give loadBalancerSourceRanges: comma-separated CIDRs, used when the field is empty.
ANNOTATION_LB_SOURCE_RANGES = "service.beta.kubernetes.io/load-balancer-source-ranges"


@dataclass
class ServicePort:
    name: str | None = None
    protocol: str | None = None
    app_protocol: str | None = None
    port: int | None = None
    target_port: IntOrString | None = None
    node_port: int | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class ClientIPConfig:
    timeout_seconds: int | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class SessionAffinityConfig:
    client_ip: ClientIPConfig | None = jfield("clientIP")
    extra: dict[str, Any] = extra_field()


@dataclass
class ServiceSpec:
    ports: list[ServicePort] | None = None
    selector: dict[str, str] | None = None
    cluster_ip: str | None = jfield("clusterIP")
    cluster_ips: list[str] | None = jfield("clusterIPs")
    type: str | None = None
    external_ips: list[str] | None = jfield("externalIPs")
    session_affinity: str | None = None
    load_balancer_ip: str | None = jfield("loadBalancerIP")
    load_balancer_source_ranges: list[str] | None = None
    external_name: str | None = None
    external_traffic_policy: str | None = None
    health_check_node_port: int | None = None
    publish_not_ready_addresses: bool | None = None
    session_affinity_config: SessionAffinityConfig | None = None
    ip_families: list[str] | None = jfield("ipFamilies")
    ip_family_policy: str | None = jfield("ipFamilyPolicy")
    allocate_load_balancer_node_ports: bool | None = None
    load_balancer_class: str | None = None
    internal_traffic_policy: str | None = None
    traffic_distribution: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class LoadBalancerIngress:
    ip: str | None = None
    hostname: str | None = None
    ip_mode: str | None = jfield("ipMode")
    extra: dict[str, Any] = extra_field()


@dataclass
class LoadBalancerStatus:
    ingress: list[LoadBalancerIngress] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class ServiceCondition:
    """metav1.Condition; LB-IPAM reports why a service has no address in one."""

    type: str | None = None
    status: str | None = None
    observed_generation: int | None = None
    last_transition_time: str | None = None
    reason: str | None = None
    message: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class ServiceStatus:
    load_balancer: LoadBalancerStatus | None = None
    conditions: list[ServiceCondition] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass
class Service(ApiObject):
    KIND: ClassVar[str] = "Service"
    RESOURCE: ClassVar[str] = "services"

    spec: ServiceSpec = field(default_factory=ServiceSpec)
    status: ServiceStatus = field(default_factory=ServiceStatus)

    # Read helpers for the agent ----------------------------------------------------------
    @property
    def type(self) -> str:
        return self.spec.type or CLUSTER_IP

    @property
    def is_headless(self) -> bool:
        return self.spec.cluster_ip == HEADLESS

    @property
    def has_selector(self) -> bool:
        return bool(self.spec.selector)

    @property
    def ports(self) -> list[ServicePort]:
        return self.spec.ports or []

    @property
    def affinity_timeout_seconds(self) -> int | None:
        """The ClientIP stickiness timeout, or None when affinity is off."""
        if (self.spec.session_affinity or AFFINITY_NONE) != AFFINITY_CLIENT_IP:
            return None
        cfg = self.spec.session_affinity_config
        if cfg and cfg.client_ip and cfg.client_ip.timeout_seconds is not None:
            return cfg.client_ip.timeout_seconds
        return DEFAULT_AFFINITY_TIMEOUT

    @property
    def node_ports(self) -> list[int]:
        return [p.node_port for p in self.ports if p.node_port]

    @property
    def load_balancer_ips(self) -> list[str]:
        lb = self.status.load_balancer
        return [i.ip for i in (lb.ingress if lb and lb.ingress else []) if i.ip]

    @property
    def source_ranges(self) -> list[str]:
        """The CIDRs allowed to reach the LoadBalancer IPs (empty: everyone), as kube-proxy reads
        them: `spec.loadBalancerSourceRanges`, else the annotation; entries space-trimmed."""
        if self.spec.load_balancer_source_ranges:
            return [r.strip() for r in self.spec.load_balancer_source_ranges]
        raw = self.annotations.get(ANNOTATION_LB_SOURCE_RANGES, "").strip()
        return [r.strip() for r in raw.split(",")] if raw else []

    @property
    def proxied(self) -> bool:
        """False for Services kube-proxy skips: ExternalName, headless, no ClusterIP, or
        labelled with service-proxy-name / headless. (Read from the fields, not through the
        type/is_headless/labels helpers: the agent asks twice per Service per sync, 20,000
        times at 10,000 Services.)"""
        spec = self.spec
        cluster_ip = spec.cluster_ip
        if not cluster_ip or cluster_ip == HEADLESS or spec.type == EXTERNAL_NAME:
            return False
        labels = self.metadata.labels
        return not labels or (LABEL_SERVICE_PROXY_NAME not in labels and LABEL_HEADLESS not in labels)
