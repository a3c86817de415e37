"""Service update rules the apiserver applies before validating an update
(pkg/registry/core/service/storage: patchAllocatedValues, dropTypeDependentFields)."""
from __future__ import annotations

from .service import EXTERNAL_NAME, LOAD_BALANCER, NODE_PORT, CLUSTER_IP, Service


def needs_cluster_ip(svc: Service) -> bool:
    return svc.type != EXTERNAL_NAME


def needs_node_ports(svc: Service) -> bool:
    """The type holds nodePorts (the apiserver's needsNodePort): the ones the user asks for
    are claimed, range-checked and kept across updates, whatever
    allocateLoadBalancerNodePorts says."""
    return svc.type in (NODE_PORT, LOAD_BALANCER)


def allocates_node_ports(svc: Service) -> bool:
    """A port without a nodePort gets one (shouldAllocateNodePorts): NodePort always,
    LoadBalancer unless allocateLoadBalancerNodePorts is false. Turning it false later
    releases nothing: the ports held stay (the API's documented behaviour)."""
    return svc.type == NODE_PORT or (svc.type == LOAD_BALANCER
                                     and svc.spec.allocate_load_balancer_node_ports is not False)


def needs_health_check_node_port(svc: Service) -> bool:
    return svc.type == LOAD_BALANCER and svc.spec.external_traffic_policy == "Local"


def normalize_cluster_ips(new: Service, old: Service) -> None:
    """An update that changes clusterIP and leaves clusterIPs as it was (an old client, or
    a merge that kept the stored list) means clusterIPs to follow (the apiserver's
    normalizeClusterIPs): a new primary replaces the first (then its immutability is what
    the user is told), and a cleared clusterIP (`clusterIP: ""`, or a key the last applied
    configuration had and the new one drops) clears the list, as a move to ExternalName
    needs."""
    spec = new.spec
    if (spec.cluster_ip or "") == (old.spec.cluster_ip or "") or spec.cluster_ips != old.spec.cluster_ips:
        return   # singular unchanged, or both changed: validation judges them
    if not spec.cluster_ip:
        spec.cluster_ips = None
    elif not spec.cluster_ips:
        spec.cluster_ips = [spec.cluster_ip]
    else:
        spec.cluster_ips = [spec.cluster_ip, *spec.cluster_ips[1:]]


def patch_allocated_values(new: Service, old: Service) -> None:
    """Carry over values the user did not set but the server allocated (clusterIP, nodePorts
    matched by port name, healthCheckNodePort)."""
    if needs_cluster_ip(old) and needs_cluster_ip(new) and not new.spec.cluster_ip:
        new.spec.cluster_ip = old.spec.cluster_ip
        new.spec.cluster_ips = old.spec.cluster_ips
    if needs_node_ports(old) and needs_node_ports(new):
        used = set(old.node_ports) & set(new.node_ports)
        by_name = {p.name or "": p.node_port for p in old.ports}
        for port in new.ports:
            if not port.node_port:
                previous = by_name.get(port.name or "")
                if previous and previous not in used:
                    port.node_port = previous
    if needs_health_check_node_port(old) and needs_health_check_node_port(new):
        if not new.spec.health_check_node_port:
            new.spec.health_check_node_port = old.spec.health_check_node_port


def drop_type_dependent_fields(new: Service, old: Service) -> None:
    """Clear fields the new type does not use, when the user left them as they were."""
    if needs_cluster_ip(old) and not needs_cluster_ip(new):
        if new.spec.cluster_ip == old.spec.cluster_ip:
            new.spec.cluster_ip = None
            new.spec.cluster_ips = None
        # The families go with the address, unless the user set them anew (which an
        # ExternalName's validation then refuses).
        if new.spec.ip_families == old.spec.ip_families:
            new.spec.ip_families = None
        if new.spec.ip_family_policy == old.spec.ip_family_policy:
            new.spec.ip_family_policy = None
        new.spec.internal_traffic_policy = None if new.spec.internal_traffic_policy == old.spec.internal_traffic_policy else new.spec.internal_traffic_policy
    if needs_node_ports(old) and not needs_node_ports(new):
        # as the apiserver's sameNodePorts: ports may be added, removed, reordered or
        # changed, as long as no nodePort is new
        if {p.node_port for p in new.ports if p.node_port} <= {p.node_port for p in old.ports if p.node_port}:
            for port in new.ports:
                port.node_port = None
    if needs_health_check_node_port(old) and not needs_health_check_node_port(new):
        if new.spec.health_check_node_port == old.spec.health_check_node_port:
            new.spec.health_check_node_port = None
    if new.type != LOAD_BALANCER:
        if new.spec.allocate_load_balancer_node_ports == old.spec.allocate_load_balancer_node_ports:
            new.spec.allocate_load_balancer_node_ports = None
        if old.type == LOAD_BALANCER and new.spec.load_balancer_class == old.spec.load_balancer_class:
            new.spec.load_balancer_class = None
    externally = new.type in (NODE_PORT, LOAD_BALANCER) or (new.type == CLUSTER_IP and new.spec.external_ips)
    if not externally and new.spec.external_traffic_policy == old.spec.external_traffic_policy:
        new.spec.external_traffic_policy = None
