"""Defaulting (the apiserver's SetDefaults_* functions): run before validation, in place.

Namespacing (filling metadata.namespace) is the caller's job; allocation of clusterIP and
nodePorts is the allocators' job (controlplane.controllers).
"""
from __future__ import annotations

from .deployment import Deployment
from .endpoints import Endpoints, EndpointSlice
from .meta import ApiObject
from .namespace import Namespace
from .pod import Pod, PodSpec
from .service import (AFFINITY_CLIENT_IP, AFFINITY_NONE, CLUSTER_IP, DEFAULT_AFFINITY_TIMEOUT,
                      EXTERNAL_NAME, LOAD_BALANCER, POLICY_CLUSTER, ClientIPConfig, Service,
                      SessionAffinityConfig)

DEFAULT_TERMINATION_GRACE_SECONDS = 30


def default_service(svc: Service) -> None:
    spec = svc.spec
    if not spec.type:
        spec.type = CLUSTER_IP
    if not spec.session_affinity:
        spec.session_affinity = AFFINITY_NONE
    if spec.session_affinity == AFFINITY_NONE:
        # SetDefaults_Service drops it: an apply that turns ClientIP off keeps the stored
        # config (a server default the manifest never named), which None may not carry.
        spec.session_affinity_config = None
    if spec.session_affinity == AFFINITY_CLIENT_IP:
        cfg = spec.session_affinity_config
        if cfg is None:
            cfg = spec.session_affinity_config = SessionAffinityConfig()
        if cfg.client_ip is None:
            cfg.client_ip = ClientIPConfig()
        if cfg.client_ip.timeout_seconds is None:
            cfg.client_ip.timeout_seconds = DEFAULT_AFFINITY_TIMEOUT
    for port in spec.ports or []:
        if not port.protocol:
            port.protocol = "TCP"
        if port.target_port in (None, 0, ""):
            port.target_port = port.port
    externally_accessible = spec.type in ("NodePort", LOAD_BALANCER) or (spec.type == CLUSTER_IP and spec.external_ips)
    if externally_accessible and not spec.external_traffic_policy:
        spec.external_traffic_policy = POLICY_CLUSTER
    if spec.type != EXTERNAL_NAME:
        if not spec.internal_traffic_policy:
            spec.internal_traffic_policy = POLICY_CLUSTER
        if not spec.ip_families:
            spec.ip_families = ["IPv4"]
        if not spec.ip_family_policy:
            spec.ip_family_policy = "SingleStack"
    if spec.type == LOAD_BALANCER and spec.allocate_load_balancer_node_ports is None:
        spec.allocate_load_balancer_node_ports = True
    if spec.cluster_ip and spec.type != EXTERNAL_NAME and not spec.cluster_ips:
        spec.cluster_ips = [spec.cluster_ip]   # (a lone clusterIP; both given: validation compares)


def default_pod_spec(spec: PodSpec, restart_policy: str = "Always") -> None:
    if not spec.restart_policy:
        spec.restart_policy = restart_policy
    if spec.termination_grace_period_seconds is None:
        spec.termination_grace_period_seconds = DEFAULT_TERMINATION_GRACE_SECONDS
    for container in spec.containers or []:
        for port in container.ports or []:
            if not port.protocol:
                port.protocol = "TCP"


def default_deployment(dep: Deployment) -> None:
    spec = dep.spec
    if spec.replicas is None:
        spec.replicas = 1
    if spec.strategy is None:
        spec.strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    if spec.revision_history_limit is None:
        spec.revision_history_limit = 10
    if spec.progress_deadline_seconds is None:
        spec.progress_deadline_seconds = 600
    default_pod_spec(spec.template.spec)


def default_endpoints(ep: Endpoints) -> None:
    for subset in ep.subsets or []:
        for port in subset.ports or []:
            if not port.protocol:
                port.protocol = "TCP"


def default_endpointslice(es: EndpointSlice) -> None:
    for port in es.ports or []:
        if not port.protocol:
            port.protocol = "TCP"


def apply_defaults(obj: ApiObject) -> None:
    """Fill the defaults for any supported kind, in place."""
    if isinstance(obj, Service):
        default_service(obj)
    elif isinstance(obj, Deployment):
        default_deployment(obj)
    elif isinstance(obj, Pod):
        default_pod_spec(obj.spec)
    elif isinstance(obj, Endpoints):
        default_endpoints(obj)
    elif isinstance(obj, EndpointSlice):
        default_endpointslice(obj)
    elif isinstance(obj, Namespace):
        obj.status = obj.status or {"phase": "Active"}
