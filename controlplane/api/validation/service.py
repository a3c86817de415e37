"""Service validation (pkg/apis/core/validation: ValidateService, ValidateServiceUpdate).

Runs on a defaulted Service (see api.defaults). Range checks for nodePorts and clusterIPs
against the configured ranges belong to the allocators, as in the apiserver.
"""
from __future__ import annotations

import json

from ..field_errors import (FieldError, GoValue, duplicate, forbidden, invalid, not_supported,
                            required)
from ..service import (AFFINITY_CLIENT_IP, ANNOTATION_LB_SOURCE_RANGES, AFFINITY_NONE, CLUSTER_IP, EXTERNAL_NAME,
                       LOAD_BALANCER, MAX_AFFINITY_TIMEOUT, NODE_PORT, POLICY_CLUSTER,
                       POLICY_LOCAL, PROTOCOLS, SERVICE_TYPES, HEADLESS, TRAFFIC_DISTRIBUTIONS, Service, ServicePort)
from ..service_update import needs_health_check_node_port
from . import names
from .meta import validate_labels, validate_object_meta, validate_port_entry_name

KUBELET_PORT = 10250


def _go_service_port(protocol: str, port: int = 0, node_port: int = 0) -> GoValue:
    return GoValue(
        f'core.ServicePort{{Name:"", Protocol:{json.dumps(protocol)}, AppProtocol:(*string)(nil), '
        f'Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:""}}, NodePort:{node_port}}}'
    )


IP_FAMILIES = ("IPv4", "IPv6")
IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")


def _validate_ip_families(svc: Service) -> list[FieldError]:
    """clusterIPs against clusterIP, ipFamilies and ipFamilyPolicy (ValidateService's
    dual-stack part), then what the apiserver of a single-stack IPv4 cluster refuses
    when it fills them in: svcxdp's clusters are IPv4 only. (Defaulting made clusterIPs
    from a lone clusterIP, as the apiserver does on create.)"""
    spec = svc.spec
    errs: list[FieldError] = []
    ips = spec.cluster_ips or []
    if spec.cluster_ip and ips and ips[0] != spec.cluster_ip:
        errs.append(invalid("spec.clusterIPs", ips, "first value must match `clusterIP`"))
    elif not spec.cluster_ip and ips:
        errs.append(invalid("spec.clusterIPs", ips, "must be empty when `clusterIP` is not specified"))
    elif len(ips) > 2:
        errs.append(invalid("spec.clusterIPs", ips, "may only hold up to 2 values"))
    elif len(ips) == 2:   # a second family's address
        errs.append(invalid("spec.clusterIPs[1]", ips[1], "not configured on this cluster"))
    # A headless Service without a selector may name any families (the apiserver
    # defaults it to RequireDualStack even on a single-stack cluster): nothing is
    # allocated for it, and an exported one must apply as it was.
    any_family = svc.is_headless and not spec.selector
    seen: set[str] = set()
    for i, family in enumerate(spec.ip_families or []):
        path = f"spec.ipFamilies[{i}]"
        if family not in IP_FAMILIES:
            errs.append(not_supported(path, family, IP_FAMILIES))
        elif family in seen:
            errs.append(duplicate(path, family))
        elif family != "IPv4" and not any_family:
            errs.append(invalid(path, family, "not configured on this cluster"))
        seen.add(family)
    policy = spec.ip_family_policy
    if policy is not None and policy not in IP_FAMILY_POLICIES:
        errs.append(not_supported("spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES))
    elif policy == "RequireDualStack" and not any_family:
        errs.append(invalid("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services"))
    return errs


def externally_accessible(svc: Service) -> bool:
    return svc.type in (LOAD_BALANCER, NODE_PORT) or (svc.type == CLUSTER_IP and bool(svc.spec.external_ips))


def _validate_port(sp: ServicePort, require_name: bool, path: str, seen_names: set[str]) -> list[FieldError]:
    errs: list[FieldError] = []
    errs.extend(validate_port_entry_name(sp.name, f"{path}.name", require_name, seen_names))
    port = sp.port or 0
    errs.extend(invalid(f"{path}.port", port, m) for m in names.port_number(port))
    if not sp.protocol:
        errs.append(required(f"{path}.protocol"))
    elif sp.protocol not in PROTOCOLS:
        errs.append(not_supported(f"{path}.protocol", sp.protocol, PROTOCOLS))
    tp = sp.target_port
    if isinstance(tp, int):
        errs.extend(invalid(f"{path}.targetPort", tp, m) for m in names.port_number(tp))
    elif isinstance(tp, str):
        errs.extend(invalid(f"{path}.targetPort", tp, m) for m in names.port_name(tp))
    if sp.node_port:
        errs.extend(invalid(f"{path}.nodePort", sp.node_port, m) for m in names.port_number(sp.node_port))
    if sp.app_protocol:
        errs.extend(invalid(f"{path}.appProtocol", sp.app_protocol, m) for m in names.qualified_name(sp.app_protocol))
    return errs


def validate_service(svc: Service) -> list[FieldError]:
    spec = svc.spec
    errs = validate_object_meta(svc.metadata, True, names.dns1035_label)
    ports = spec.ports or []
    stype = svc.type

    if stype not in SERVICE_TYPES:
        errs.append(not_supported("spec.type", stype, SERVICE_TYPES))

    if not ports and not svc.is_headless and stype != EXTERNAL_NAME:
        errs.append(required("spec.ports"))

    if stype == EXTERNAL_NAME:
        if spec.cluster_ip or spec.cluster_ips:
            errs.append(forbidden("spec.clusterIPs", "may not be set for ExternalName services"))
        # An ExternalName has no address, so no family either (an update from another
        # type has the stored ones dropped first: service_update.drop_type_dependent_fields).
        if spec.ip_families:
            errs.append(forbidden("spec.ipFamilies", "may not be set for ExternalName services"))
        if spec.ip_family_policy is not None:
            errs.append(forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services"))
        cname = (spec.external_name or "").removesuffix(".")
        if cname:
            errs.extend(invalid("spec.externalName", cname, m) for m in names.dns1123_subdomain(cname))
        else:
            errs.append(required("spec.externalName"))
    else:
        ip = spec.cluster_ip or ""
        if ip and ip != HEADLESS:
            errs.extend(invalid("spec.clusterIPs[0]", ip, m) for m in names.ip_address(ip))
        errs.extend(_validate_ip_families(svc))

    seen: set[str] = set()
    for i, sp in enumerate(ports):
        errs.extend(_validate_port(sp, len(ports) > 1, f"spec.ports[{i}]", seen))

    if spec.selector:
        errs.extend(validate_labels(spec.selector, "spec.selector"))

    affinity = spec.session_affinity or ""
    if affinity not in (AFFINITY_CLIENT_IP, AFFINITY_NONE):
        errs.append(not_supported("spec.sessionAffinity", affinity, (AFFINITY_CLIENT_IP, AFFINITY_NONE)))
    if affinity == AFFINITY_CLIENT_IP:
        errs.extend(_validate_client_ip_affinity(svc))
    elif affinity == AFFINITY_NONE and spec.session_affinity_config is not None:
        errs.append(forbidden("spec.sessionAffinityConfig", "must not be set when session affinity is None"))

    for i, ip in enumerate(spec.external_ips or []):
        bad = names.ip_address(ip)
        if not bad and (special := names.special_ip(ip)):
            bad = [special]
        errs.extend(invalid(f"spec.externalIPs[{i}]", ip, m) for m in bad)

    if stype in (NODE_PORT, LOAD_BALANCER) and svc.is_headless:
        errs.append(invalid("spec.clusterIPs[0]", HEADLESS, f"may not be set to 'None' for {stype} services"))

    if stype == LOAD_BALANCER:   # as the apiserver: a cloud's firewall may open the port
        errs.extend(invalid(f"spec.ports[{i}]", sp.port, f"may not expose port {KUBELET_PORT} externally "
                            "since it is used by kubelet") for i, sp in enumerate(ports) if sp.port == KUBELET_PORT)

    if stype == CLUSTER_IP:
        for i, sp in enumerate(ports):
            if sp.node_port:
                errs.append(forbidden(f"spec.ports[{i}].nodePort", "may not be used when `type` is 'ClusterIP'"))

    seen_node_ports: set[tuple[str, int]] = set()
    seen_ports: set[tuple[str, int]] = set()
    for i, sp in enumerate(ports):
        protocol, port = sp.protocol or "", sp.port or 0
        if sp.node_port:
            key = (protocol, sp.node_port)
            if key in seen_node_ports:
                errs.append(duplicate(f"spec.ports[{i}].nodePort", sp.node_port))
            seen_node_ports.add(key)
        key = (protocol, port)
        if key in seen_ports:
            errs.append(duplicate(f"spec.ports[{i}]", _go_service_port(protocol, port)))
        seen_ports.add(key)

    errs.extend(_validate_source_ranges(svc))
    # (spec.loadBalancerIP on another type is no error: ValidateService has no such rule;
    # LB-IPAM reads it only for LoadBalancer services.)
    if spec.allocate_load_balancer_node_ports is not None and stype != LOAD_BALANCER:
        errs.append(forbidden("spec.allocateLoadBalancerNodePorts", "may only be used when `type` is 'LoadBalancer'"))
    errs.extend(_validate_load_balancer_class(svc))

    errs.extend(_validate_traffic_policies(svc))
    return errs


def _validate_source_ranges(svc: Service) -> list[FieldError]:
    """The field, or else the annotation; each entry a CIDR (space padding tolerated). The
    path spells the field with a capital L, as the apiserver does."""
    ranges = svc.spec.load_balancer_source_ranges or []
    annotation = svc.annotations.get(ANNOTATION_LB_SOURCE_RANGES)
    if ranges:
        path = "spec.LoadBalancerSourceRanges"
        entries = [(f"{path}[{i}]", value.strip()) for i, value in enumerate(ranges)]
    elif annotation is not None:
        path = f"metadata.annotations[{ANNOTATION_LB_SOURCE_RANGES}]"
        entries = [(path, v.strip()) for v in annotation.strip().split(",")] if annotation.strip() else []
    else:
        return []
    errs: list[FieldError] = []
    if svc.type != LOAD_BALANCER:
        errs.append(forbidden(path, "may only be used when `type` is 'LoadBalancer'"))
    for entry_path, value in entries:
        errs.extend(invalid(entry_path, value, m) for m in names.cidr(value))
    return errs


def _validate_load_balancer_class(svc: Service) -> list[FieldError]:
    cls = svc.spec.load_balancer_class
    if cls is None:
        return []
    if svc.type == LOAD_BALANCER:
        return [invalid("spec.loadBalancerClass", cls, m) for m in names.qualified_name(cls)]
    return [forbidden("spec.loadBalancerClass", "may only be used when service type is 'LoadBalancer'")]


def _validate_client_ip_affinity(svc: Service) -> list[FieldError]:
    cfg = svc.spec.session_affinity_config
    path = "spec.sessionAffinityConfig"
    if cfg is None:
        return [required(path, "when session affinity type is ClientIP")]
    if cfg.client_ip is None:
        return [required(f"{path}.clientIP")]
    timeout = cfg.client_ip.timeout_seconds
    if timeout is None:
        return [required(f"{path}.clientIP.timeoutSeconds")]
    if timeout <= 0 or timeout > MAX_AFFINITY_TIMEOUT:
        return [invalid(f"{path}.clientIP.timeoutSeconds", timeout,
                        f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}")]
    return []


def _validate_traffic_policies(svc: Service) -> list[FieldError]:
    spec = svc.spec
    errs: list[FieldError] = []
    policies = (POLICY_CLUSTER, POLICY_LOCAL)
    if externally_accessible(svc):
        if not spec.external_traffic_policy:
            errs.append(required("spec.externalTrafficPolicy"))
        elif spec.external_traffic_policy not in policies:
            errs.append(not_supported("spec.externalTrafficPolicy", spec.external_traffic_policy, policies))
    elif spec.external_traffic_policy:
        errs.append(invalid("spec.externalTrafficPolicy", spec.external_traffic_policy,
                            "may only be set for externally-accessible services"))
    hc = spec.health_check_node_port
    if svc.type != LOAD_BALANCER or spec.external_traffic_policy != POLICY_LOCAL:
        if hc:
            errs.append(invalid("spec.healthCheckNodePort", hc,
                                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
    elif hc:  # unset is fine here: the allocator fills it in (the apiserver allocates first)
        errs.extend(invalid("spec.healthCheckNodePort", hc, m) for m in names.port_number(hc))
    if svc.type != EXTERNAL_NAME:
        itp = spec.internal_traffic_policy
        if not itp:
            errs.append(required("spec.internalTrafficPolicy"))
        elif itp not in policies:
            errs.append(not_supported("spec.internalTrafficPolicy", itp, policies))
    td = spec.traffic_distribution
    if td is not None and td not in TRAFFIC_DISTRIBUTIONS:
        errs.append(not_supported("spec.trafficDistribution", td, TRAFFIC_DISTRIBUTIONS))
    return errs


def validate_service_update(new: Service, old: Service) -> list[FieldError]:
    errs = validate_service(new)
    if old.type == LOAD_BALANCER and new.type == LOAD_BALANCER \
            and old.spec.load_balancer_class != new.spec.load_balancer_class:
        errs.append(invalid("spec.loadBalancerClass", new.spec.load_balancer_class, "may not change once set"))
    if needs_health_check_node_port(old) and needs_health_check_node_port(new) \
            and new.spec.health_check_node_port != old.spec.health_check_node_port:
        errs.append(forbidden("spec.healthCheckNodePort", "field is immutable"))
    if EXTERNAL_NAME not in (new.type, old.type) and not (new.is_headless and old.is_headless):
        # validateUpgradeDowngradeClusterIPs, single-stack: the primary may not change
        before, after = old.spec.cluster_ips or [], new.spec.cluster_ips or []
        if before and not after:
            errs.append(invalid("spec.clusterIPs[0]", after, "primary clusterIP can not be unset"))
        elif before and after and before[0] != after[0]:
            errs.append(invalid("spec.clusterIPs[0]", after, "may not change once set"))
    return errs
