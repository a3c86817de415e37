"""svcctl describe svc [NAME...] (kubectl's describeService layout)."""
from __future__ import annotations

import argparse
import datetime as _dt

from controlplane.api.endpoints import Endpoints
from controlplane.api.merge import LAST_APPLIED
from controlplane.api.event import Event
from controlplane.api.meta import now
from controlplane.api.service import LoadBalancerIngress, Service
from controlplane.errors import CommandError
from controlplane.controllers.events import events_for

from .options import add_selector, common_parent
from .printers.age import age
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


def describe_service(svc: Service, endpoints: Endpoints | None, events: list[Event] | None = None) -> str:
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
        lines.append(["Endpoints:", format_endpoints(endpoints, {port.name or ""})])   # <none> without
    lines.append(["Session Affinity:", spec.session_affinity or "None"])
    if spec.external_traffic_policy:
        lines.append(["External Traffic Policy:", spec.external_traffic_policy])
    if spec.internal_traffic_policy:
        lines.append(["Internal Traffic Policy:", spec.internal_traffic_policy])
    if spec.health_check_node_port:
        lines.append(["HealthCheck NodePort:", str(spec.health_check_node_port)])
    if spec.load_balancer_source_ranges:
        lines.append(["LoadBalancer Source Ranges:", ",".join(spec.load_balancer_source_ranges)])
    if spec.traffic_distribution:
        lines.append(["Traffic Distribution:", spec.traffic_distribution])
    events = _events(events or [])
    if not events:
        lines.append(["Events:", NONE])
        return format_describe(lines)
    # kubectl flushes before the events: their table is aligned on its own
    return "\n".join([format_describe(lines), "Events:", format_describe(events)])


def event_source(event: Event) -> str:
    """kubectl's formatEventSource: the component, then the host if any."""
    src = event.source
    component = (src.component if src else None) or event.reporting_component or ""
    host = (src.host if src else None) or event.reporting_instance
    return f"{component}, {host}" if host else component


def event_age(event: Event, at: _dt.datetime) -> str:
    """`5m` or, for an aggregated event, `5m (x3 over 20m)` (kubectl describe)."""
    last = age(event.last_seen, at)
    if (event.count or 1) > 1 and event.first_timestamp:
        return f"{last} (x{event.count} over {age(event.first_timestamp, at)})"
    return last


def _events(events: list[Event]) -> list[list[str]]:
    """The Events table rows, oldest last-seen first (kubectl sorts by lastTimestamp)."""
    if not events:
        return []
    at = now()
    rows = [["  " + (e.type or ""), e.reason or "", event_age(e, at), event_source(e), (e.message or "").strip()]
            for e in events]
    return [["  Type", "Reason", "Age", "From", "Message"], ["  ----", "------", "----", "----", "-------"], *rows]


@command(missing="error")
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
    blocks = [describe_service(svc, session.store.try_get(Endpoints, svc.namespace, svc.name),
                               events_for(session.store, svc)) for svc in services]
    if blocks:
        print("\n\n\n".join(blocks))
    else:
        raise CommandError(f"No resources found in {session.namespace} namespace.")
    return 0
