"""svcctl describe svc [NAME...] (kubectl's describeService layout)."""
from __future__ import annotations

import argparse

from controlplane.api.endpoints import Endpoints
from controlplane.api.merge import LAST_APPLIED
from controlplane.api.meta import now, parse_timestamp
from controlplane.api.service import LoadBalancerIngress, Service
from controlplane.errors import CommandError
from controlplane.controllers.lb_ipam import CONDITION_TYPE

from .options import add_selector, common_parent
from .printers.age import human_duration
from .printers.columns import format_endpoints, format_labels
from .printers.table import format_describe
from .resources import lookup
from .session import Session, command, parse_selector

NONE = "<none>"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", parents=[common_parent()], help="show a Service in detail (kubectl describe svc)")
    p.add_argument("args", nargs="+", metavar="svc [NAME...] | svc/NAME")
    add_selector(p)
    p.set_defaults(func=run_describe)


def _multiline(title: str, items: dict[str, str], skip: tuple[str, ...] = ()) -> list[list[str]]:
    entries = [(k, v) for k, v in sorted(items.items()) if k not in skip]
    if not entries:
        return [[f"{title}:", NONE]]
    return [[f"{title}:" if i == 0 else "", f"{k}={v}"] for i, (k, v) in enumerate(entries)]


def _ingress(ingress: LoadBalancerIngress) -> str:
    """`192.168.1.241 (VIP)`: the address with its ipMode, or the hostname (buildIngressString)."""
    if ingress.ip:
        return f"{ingress.ip} ({ingress.ip_mode})" if ingress.ip_mode else ingress.ip
    return ingress.hostname or ""


def describe_service(svc: Service, endpoints: Endpoints | None) -> str:
    spec = svc.spec
    lines: list[list[str]] = [["Name:", svc.name], ["Namespace:", svc.namespace]]
    lines += _multiline("Labels", svc.labels)
    lines += _multiline("Annotations", svc.annotations, skip=(LAST_APPLIED,))
    lines.append(["Selector:", format_labels(spec.selector)])
    lines.append(["Type:", svc.type])
    if spec.ip_family_policy:
        lines.append(["IP Family Policy:", spec.ip_family_policy])
    lines.append(["IP Families:", ",".join(spec.ip_families) if spec.ip_families else NONE])
    lines.append(["IP:", spec.cluster_ip or ""])
    lines.append(["IPs:", ",".join(spec.cluster_ips) if spec.cluster_ips else NONE])
    if spec.external_ips:
        lines.append(["External IPs:", ",".join(spec.external_ips)])
    if spec.load_balancer_ip:
        lines.append(["Desired LoadBalancer IP:", spec.load_balancer_ip])
    if spec.external_name:
        lines.append(["External Name:", spec.external_name])
    lb = svc.status.load_balancer
    if lb and lb.ingress:
        lines.append(["LoadBalancer Ingress:", ", ".join(_ingress(i) for i in lb.ingress)])
    for port in svc.ports:
        name = port.name or "<unset>"
        lines.append(["Port:", name, f"{port.port}/{port.protocol}"])
        lines.append(["TargetPort:", f"{port.target_port}/{port.protocol}"])
        if port.node_port:
            lines.append(["NodePort:", name, f"{port.node_port}/{port.protocol}"])
        lines.append(["Endpoints:", format_endpoints(endpoints, {port.name or ""}) if endpoints else ""])
    lines.append(["Session Affinity:", spec.session_affinity or "None"])
    if spec.external_traffic_policy:
        lines.append(["External Traffic Policy:", spec.external_traffic_policy])
    if spec.internal_traffic_policy:
        lines.append(["Internal Traffic Policy:", spec.internal_traffic_policy])
    if spec.health_check_node_port:
        lines.append(["HealthCheck NodePort:", str(spec.health_check_node_port)])
    if spec.load_balancer_source_ranges:
        lines.append(["LoadBalancer Source Ranges:", ",".join(spec.load_balancer_source_ranges)])
    events = _events(svc)
    if not events:
        lines.append(["Events:", NONE])
        return format_describe(lines)
    # kubectl flushes before the events: their table is aligned on its own
    return "\n".join([format_describe(lines), "Events:", format_describe(events)])


def _events(svc: Service) -> list[list[str]]:
    """Events rows. There is no Event kind here: LB-IPAM's condition stands in for the
    events MetalLB's controller records (a warning while the service waits for an address)."""
    rows = []
    for c in svc.status.conditions or []:
        if c.type != CONDITION_TYPE:
            continue
        since = parse_timestamp(c.last_transition_time) if c.last_transition_time else None
        age = human_duration((now() - since).total_seconds()) if since else "<unknown>"
        rows.append(["  " + ("Normal" if c.status == "True" else "Warning"), c.reason or "", age, "lb-ipam",
                     (c.message or "").strip()])
    if not rows:
        return []
    return [["  Type", "Reason", "Age", "From", "Message"], ["  ----", "------", "----", "----", "-------"], *rows]


@command
def run_describe(args: argparse.Namespace, session: Session) -> int:
    first = args.args[0]
    kind, _, inline_name = first.partition("/")
    res = lookup(kind)
    if res.cls is not Service:
        raise CommandError(f"describe is implemented for services only (svc), not {res.plural}")
    names = ([inline_name] if inline_name else []) + list(args.args[1:])
    if names:
        services = [session.store.get(Service, session.namespace, n) for n in names]
    else:
        services = session.store.list(Service, session.namespace, parse_selector(args.selector))
    blocks = [describe_service(svc, session.store.try_get(Endpoints, svc.namespace, svc.name)) for svc in services]
    if blocks:
        print("\n\n\n".join(blocks))
    else:
        raise CommandError(f"No resources found in {session.namespace} namespace.")
    return 0
