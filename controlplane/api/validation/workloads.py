"""Pod and Deployment validation (containers, ports, selectors, replicas)."""
from __future__ import annotations

from ..deployment import Deployment, LabelSelectorSpec
from ..field_errors import FieldError, GoValue, duplicate, forbidden, invalid, not_supported, required
from ..pod import DNS_NONE, DNS_POLICIES, Pod, PodDNSConfig, PodSpec
from ..selectors import Selector
from ..service import PROTOCOLS
from . import names
from .meta import validate_labels, validate_object_meta

RESTART_POLICIES = ("Always", "Never", "OnFailure")
SELECTOR_OPERATORS = ("DoesNotExist", "Exists", "In", "NotIn")


def validate_pod_spec(spec: PodSpec, path: str, restart_policies: tuple[str, ...] = RESTART_POLICIES) -> list[FieldError]:
    errs: list[FieldError] = []
    containers = spec.containers or []
    if not containers:
        errs.append(required(f"{path}.containers"))
    container_names: set[str] = set()
    for i, c in enumerate(containers):
        cpath = f"{path}.containers[{i}]"
        if not c.name:
            errs.append(required(f"{cpath}.name"))
        else:
            errs.extend(invalid(f"{cpath}.name", c.name, m) for m in names.dns1123_label(c.name))
            if c.name in container_names:
                errs.append(duplicate(f"{cpath}.name", c.name))
            container_names.add(c.name)
        if not c.image or not c.image.strip():
            errs.append(required(f"{cpath}.image"))
        port_names: set[str] = set()
        for j, p in enumerate(c.ports or []):
            ppath = f"{cpath}.ports[{j}]"
            if p.name:
                errs.extend(invalid(f"{ppath}.name", p.name, m) for m in names.port_name(p.name))
                if p.name in port_names:
                    errs.append(duplicate(f"{ppath}.name", p.name))
                port_names.add(p.name)
            if p.container_port is None:
                errs.append(required(f"{ppath}.containerPort"))
            else:
                errs.extend(invalid(f"{ppath}.containerPort", p.container_port, m)
                            for m in names.port_number(p.container_port))
            if p.host_port:
                errs.extend(invalid(f"{ppath}.hostPort", p.host_port, m) for m in names.port_number(p.host_port))
            if not p.protocol:
                errs.append(required(f"{ppath}.protocol"))
            elif p.protocol not in PROTOCOLS:
                errs.append(not_supported(f"{ppath}.protocol", p.protocol, PROTOCOLS))
    if spec.restart_policy and spec.restart_policy not in restart_policies:
        errs.append(not_supported(f"{path}.restartPolicy", spec.restart_policy, restart_policies))
    if spec.termination_grace_period_seconds is not None and spec.termination_grace_period_seconds < 0:
        errs.append(invalid(f"{path}.terminationGracePeriodSeconds", spec.termination_grace_period_seconds,
                            "must be greater than or equal to 0"))
    if spec.hostname:
        errs.extend(invalid(f"{path}.hostname", spec.hostname, m) for m in names.dns1123_label(spec.hostname))
    if spec.subdomain:
        errs.extend(invalid(f"{path}.subdomain", spec.subdomain, m) for m in names.dns1123_label(spec.subdomain))
    errs.extend(validate_dns(spec, path))
    return errs


MAX_DNS_NAMESERVERS = 3
MAX_DNS_SEARCHES = 32
MAX_DNS_SEARCH_CHARS = 2048


def validate_dns(spec: PodSpec, path: str) -> list[FieldError]:
    """dnsPolicy and dnsConfig as the apiserver checks them (validateDNSPolicy /
    validatePodDNSConfig)."""
    errs: list[FieldError] = []
    policy = spec.dns_policy
    if policy and policy not in DNS_POLICIES:
        errs.append(not_supported(f"{path}.dnsPolicy", policy, DNS_POLICIES))
    cfg = spec.dns_config
    cpath = f"{path}.dnsConfig"
    if policy == DNS_NONE:
        if cfg is None:
            errs.append(required(cpath, "must provide `dnsConfig` when `dnsPolicy` is None"))
        elif not cfg.nameservers:
            errs.append(required(f"{cpath}.nameservers", "must provide at least one DNS nameserver when `dnsPolicy` is None"))
    if cfg is None:
        return errs
    return errs + _dns_config(cfg, cpath)


def _dns_config(cfg: PodDNSConfig, cpath: str) -> list[FieldError]:
    errs: list[FieldError] = []
    servers = cfg.nameservers or []
    if len(servers) > MAX_DNS_NAMESERVERS:
        errs.append(invalid(f"{cpath}.nameservers", servers, f"must not have more than {MAX_DNS_NAMESERVERS} nameservers"))
    for i, ns in enumerate(servers):
        errs.extend(invalid(f"{cpath}.nameservers[{i}]", ns, m) for m in names.ip_address(ns))
    searches = cfg.searches or []
    if len(searches) > MAX_DNS_SEARCHES:
        errs.append(invalid(f"{cpath}.searches", searches, f"must not have more than {MAX_DNS_SEARCHES} search paths"))
    if len(" ".join(searches)) > MAX_DNS_SEARCH_CHARS:
        errs.append(invalid(f"{cpath}.searches", searches,
                            f"must not have more than {MAX_DNS_SEARCH_CHARS} characters (including spaces) in the search list"))
    for i, domain in enumerate(searches):
        errs.extend(invalid(f"{cpath}.searches[{i}]", domain, m)
                    for m in names.dns1123_subdomain(domain[:-1] if domain.endswith(".") else domain))
    for i, opt in enumerate(cfg.options or []):
        if not opt.name:
            errs.append(required(f"{cpath}.options[{i}].name", "Must not be empty"))
    return errs


def validate_pod(pod: Pod) -> list[FieldError]:
    errs = validate_object_meta(pod.metadata, True, names.dns1123_subdomain)
    errs.extend(validate_pod_spec(pod.spec, "spec"))
    if pod.status.pod_ip:
        errs.extend(invalid("status.podIP", pod.status.pod_ip, m) for m in names.ip_address(pod.status.pod_ip))
    return errs


def go_label_selector(sel: LabelSelectorSpec) -> GoValue:
    labels = ", ".join(f'"{k}":"{v}"' for k, v in sorted((sel.match_labels or {}).items()))
    ml = f"map[string]string{{{labels}}}" if sel.match_labels is not None else "map[string]string(nil)"
    return GoValue(f"v1.LabelSelector{{MatchLabels:{ml}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}}")


def validate_label_selector(sel: LabelSelectorSpec, path: str) -> list[FieldError]:
    errs = validate_labels(sel.match_labels, f"{path}.matchLabels")
    for i, expr in enumerate(sel.match_expressions or []):
        epath = f"{path}.matchExpressions[{i}]"
        op = expr.operator or ""
        if op in ("In", "NotIn"):
            if not expr.values:
                errs.append(required(f"{epath}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif op in ("Exists", "DoesNotExist"):
            if expr.values:
                errs.append(forbidden(f"{epath}.values",
                                      "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
        else:
            errs.append(invalid(f"{epath}.operator", op, "not a valid selector operator"))
        errs.extend(invalid(f"{epath}.key", expr.key or "", m) for m in names.qualified_name(expr.key or ""))
    return errs


def validate_deployment(dep: Deployment) -> list[FieldError]:
    errs = validate_object_meta(dep.metadata, True, names.dns1123_subdomain)
    spec = dep.spec
    if spec.replicas is not None and spec.replicas < 0:
        errs.append(invalid("spec.replicas", spec.replicas, "must be greater than or equal to 0"))
    template_labels = spec.template.metadata.labels or {}
    if spec.selector is None:
        errs.append(required("spec.selector"))
    else:
        errs.extend(validate_label_selector(spec.selector, "spec.selector"))
        if not spec.selector.match_labels and not spec.selector.match_expressions:
            errs.append(invalid("spec.selector", go_label_selector(spec.selector), "empty selector is invalid for deployment"))
        else:
            try:
                matches = Selector.from_spec(spec.selector).matches(template_labels)
            except ValueError:
                matches = True  # operator error already reported above
            if not matches:
                errs.append(invalid("spec.template.metadata.labels", template_labels,
                                    "`selector` does not match template `labels`"))
    errs.extend(validate_labels(template_labels, "spec.template.metadata.labels"))
    errs.extend(validate_pod_spec(spec.template.spec, "spec.template.spec", ("Always",)))
    return errs


def validate_deployment_update(new: Deployment, old: Deployment) -> list[FieldError]:
    errs = validate_deployment(new)
    if new.spec.selector != old.spec.selector and new.spec.selector is not None:
        errs.append(invalid("spec.selector", go_label_selector(new.spec.selector), "field is immutable"))
    return errs
