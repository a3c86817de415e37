"""svcctl get TYPE[,TYPE] [NAME...] | TYPE/NAME... [-l SEL] [-n NS | -A] [-o wide|json|yaml|name]"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from controlplane.api.errors import NotFound
from controlplane.api.event import Event
from controlplane.api.meta import ApiObject, now
from controlplane.controllers.events import visible
from controlplane.errors import CommandError

from .fields import parse_field_selector, select_fields
from .options import add_output, add_selector, common_parent
from .printers.columns import HEADERS, ROWS, format_labels
from .printers.structured import render
from .printers.table import format_table
from .resources import Resource, lookup
from .session import Session, command, eprint, parse_selector

ALL = ("pods", "services", "deployments")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", parents=[common_parent()], help="list objects (kubectl get)")
    p.add_argument("args", nargs="*", metavar="TYPE[,TYPE] [NAME...] | TYPE/NAME")
    add_selector(p)
    add_output(p)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument("--show-labels", action="store_true", help="add a LABELS column")
    p.add_argument("--no-headers", action="store_true", help="omit the header line")
    p.add_argument("--field-selector", default=None, metavar="SEL",
                   help="field selector, e.g. involvedObject.name=nginx,type=Warning")
    p.set_defaults(func=run_get)


@dataclass
class Request:
    resource: Resource
    names: list[str] = field(default_factory=list)


def parse_requests(args: list[str]) -> tuple[list[Request], bool]:
    """Returns the requests and whether names should carry a `type/` prefix."""
    if not args:
        raise CommandError('You must specify the type of resource to get. Use "svcctl get svc,ep,pods,deploy"')
    if "/" in args[0]:
        requests: list[Request] = []
        for arg in args:
            if "/" not in arg:
                raise CommandError("there is no need to specify a resource type as a separate argument when "
                                   "passing arguments in resource/name form")
            kind, _, name = arg.partition("/")
            res = lookup(kind)
            match = next((r for r in requests if r.resource is res), None)
            if match is None:
                requests.append(Request(res, [name]))
            else:
                match.names.append(name)
        return requests, len(args) > 1
    types = [t for t in args[0].split(",") if t]
    expanded = [t for name in types for t in (ALL if name == "all" else (name,))]
    resources: list[Resource] = []
    for t in expanded:
        res = lookup(t)
        if res not in resources:
            resources.append(res)
    names = args[1:]
    if names and len(resources) > 1:
        raise CommandError("you must specify only one resource type when passing names")
    return [Request(r, list(names)) for r in resources], len(resources) > 1


def _table(res: Resource, objects: list[ApiObject], args: argparse.Namespace, prefix: bool) -> str:
    wide = args.output == "wide"
    at = now()
    base, extra = HEADERS[res.cls]
    header = list(base) + (list(extra) if wide else [])
    with_ns = args.all_namespaces and res.cls.NAMESPACED
    if with_ns:
        header.insert(0, "NAMESPACE")
    if args.show_labels:
        header.append("LABELS")
    rows = [] if args.no_headers else [header]
    for obj in objects:
        row = ROWS[res.cls](obj, wide, at)
        if prefix:
            row[0] = res.ref(row[0])
        if with_ns:
            row.insert(0, obj.namespace)
        if args.show_labels:
            row.append(format_labels(obj.labels))
        rows.append(row)
    return format_table(rows)


@command(missing="error")
def run_get(args: argparse.Namespace, session: Session) -> int:
    requests, prefix = parse_requests(args.args)
    selector = parse_selector(args.selector)
    if selector is not None and any(r.names for r in requests):
        raise CommandError("name cannot be provided when a selector is specified")
    if args.all_namespaces and any(r.names for r in requests):
        raise CommandError("a resource cannot be retrieved by name across all namespaces")
    namespace = None if args.all_namespaces else session.namespace
    fields = parse_field_selector(args.field_selector)
    failed = False
    groups: list[tuple[Resource, list[ApiObject]]] = []
    for req in requests:
        if req.names:
            found = []
            for name in req.names:
                try:
                    found.append(session.store.get(req.resource.cls, session.namespace, name))
                except NotFound as exc:
                    eprint(f"Error from server (NotFound): {exc.message}")
                    failed = True
            groups.append((req.resource, found))
        else:
            found = session.store.list(req.resource.cls, namespace, selector)
            if req.resource.cls is Event:   # oldest last-seen first, expired ones hidden
                found = visible(found)
            groups.append((req.resource, select_fields(found, fields)))
    objects = [o for _, objs in groups for o in objs]
    if args.output in ("json", "yaml", "name"):
        single = len(requests) == 1 and len(requests[0].names) == 1
        if objects or args.output != "name":
            if objects or not failed:
                print(render(objects, args.output, single))
        return 1 if failed else 0
    tables = [_table(res, objs, args, prefix) for res, objs in groups if objs]
    if tables:
        print("\n\n".join(tables))
    elif not failed:
        where = "" if args.all_namespaces else f" in {session.namespace} namespace"
        if all(not r.resource.cls.NAMESPACED for r in requests):
            where = ""
        print(f"No resources found{where}." if where else "No resources found", file=sys.stderr)
    return 1 if failed else 0
