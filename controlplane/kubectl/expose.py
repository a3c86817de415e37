"""svcctl expose deployment|service|pod NAME [--port] [--target-port] [--name] [--protocol] [--type] ..."""
from __future__ import annotations

import argparse

from controlplane.api.deployment import Deployment
from controlplane.api.meta import ApiObject, ObjectMeta
from controlplane.api.pod import Container, Pod
from controlplane.api.service import Service, ServicePort, ServiceSpec
from controlplane.errors import CommandError

from .options import common_parent
from .printers.structured import render
from .resources import lookup
from .session import Session, command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("expose", parents=[common_parent()], help="make a Service for a deployment, pod or service")
    p.add_argument("args", nargs="+", metavar="deployment NAME | deployment/NAME")
    p.add_argument("--name", default=None, help="service name (default: the object's name)")
    p.add_argument("--port", type=int, default=None, help="service port (default: the container ports)")
    p.add_argument("--target-port", default=None, help="container port number or name (default: --port)")
    p.add_argument("--protocol", default=None, choices=("TCP", "UDP", "SCTP"))
    p.add_argument("--type", default=None, choices=("ClusterIP", "NodePort", "LoadBalancer"))
    p.add_argument("--selector", default=None, help="pod selector k=v,... (default: the object's)")
    p.add_argument("--labels", "-L", default=None, help="service labels k=v,... (default: the object's)")
    p.add_argument("--external-ip", default=None)
    p.add_argument("--cluster-ip", default=None, help='an address in the service range, or "None" (headless)')
    p.add_argument("--session-affinity", default=None, choices=("None", "ClientIP"))
    p.add_argument("--port-name", default=None)
    p.add_argument("--dry-run", choices=("none", "client"), default="none")
    p.add_argument("-o", "--output", choices=("json", "yaml", "name"), default=None)
    p.set_defaults(func=run_expose)


def _parse_labels(text: str, flag: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CommandError(f"invalid {flag} {text!r}: expected k=v[,k=v...]")
        out[key.strip()] = value.strip()
    return out


def _source_selector(obj: ApiObject) -> dict[str, str]:
    if isinstance(obj, Deployment):
        sel = obj.spec.selector
        if sel is not None and sel.match_expressions:
            raise CommandError("couldn't retrieve selectors via --selector flag or introspection: "
                               "the Deployment's selector has matchExpressions, which cannot be converted to a Service selector")
        return dict(sel.match_labels or {}) if sel else {}
    if isinstance(obj, Service):
        return dict(obj.spec.selector or {})
    if isinstance(obj, Pod):
        return dict(obj.labels)
    return {}


def _source_containers(obj: ApiObject) -> list[Container]:
    if isinstance(obj, Deployment):
        return obj.spec.template.spec.containers or []
    if isinstance(obj, Pod):
        return obj.containers
    return []


def _ports(args: argparse.Namespace, obj: ApiObject) -> list[ServicePort]:
    target = args.target_port
    target_value: int | str | None = int(target) if target and target.isdigit() else target
    if args.port is not None:
        return [ServicePort(name=args.port_name, port=args.port, protocol=args.protocol or "TCP",
                            target_port=target_value if target_value is not None else args.port)]
    if isinstance(obj, Service):
        return [ServicePort(name=p.name, port=p.port, protocol=args.protocol or p.protocol,
                            target_port=target_value if target_value is not None else p.target_port)
                for p in obj.ports]
    container_ports = [cp for c in _source_containers(obj) for cp in c.ports or []]
    if not container_ports:
        raise CommandError("couldn't find port via --port flag or introspection")
    many = len(container_ports) > 1
    return [ServicePort(name=f"port-{i + 1}" if many else args.port_name, port=cp.container_port,
                        protocol=args.protocol or cp.protocol or "TCP",
                        target_port=target_value if target_value is not None else cp.container_port)
            for i, cp in enumerate(container_ports)]


@command
def run_expose(args: argparse.Namespace, session: Session) -> int:
    kind, _, inline = args.args[0].partition("/")
    names = ([inline] if inline else []) + args.args[1:]
    if len(names) != 1:
        raise CommandError("expose needs exactly one resource: TYPE NAME or TYPE/NAME")
    res = lookup(kind)
    if res.cls not in (Deployment, Service, Pod):
        raise CommandError(f"cannot expose a {res.cls.KIND}")
    source = session.store.get(res.cls, session.namespace, names[0])
    selector = _parse_labels(args.selector, "--selector") if args.selector else _source_selector(source)
    if not selector:
        raise CommandError("couldn't retrieve selectors via --selector flag or introspection")
    labels = _parse_labels(args.labels, "--labels") if args.labels else (dict(source.labels) or None)
    svc = Service(
        metadata=ObjectMeta(name=args.name or source.name, namespace=session.namespace, labels=labels),
        spec=ServiceSpec(selector=selector, ports=_ports(args, source), type=args.type,
                         session_affinity=args.session_affinity,
                         external_ips=[args.external_ip] if args.external_ip else None,
                         cluster_ip=args.cluster_ip),
    )
    if args.dry_run == "client":
        print(render([svc], args.output or "yaml", True))
        return 0
    created = session.registry.create(svc)
    session.reconcile()
    if args.output:
        print(render([created], args.output, True))
    else:
        print(f"service/{created.name} exposed")
    return 0
