"""svcctl delete TYPE NAME... | TYPE/NAME... | -f FILE | TYPE -l SEL | TYPE --all"""
from __future__ import annotations

import argparse

from controlplane.api.errors import ApiError, NotFound
from controlplane.api.kinds import UnknownKind, resolve
from controlplane.errors import CommandError

from .errors import api_error_message
from .files import read_documents
from .options import add_files, add_selector, common_parent
from .resources import Resource, for_class, lookup
from .session import Session, command, eprint, parse_selector


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("delete", parents=[common_parent()], help="delete objects (kubectl delete)")
    p.add_argument("args", nargs="*", metavar="TYPE NAME... | TYPE/NAME")
    add_files(p)
    add_selector(p)
    p.add_argument("--all", action="store_true", help="delete every object of the type in the namespace")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--grace-period", type=int, default=None, help="seconds a pod gets to stop (0: at once)")
    p.add_argument("--force", action="store_true", help="with --grace-period=0: remove pods immediately")
    p.add_argument("--ignore-not-found", action="store_true")
    p.set_defaults(func=run_delete)


Target = tuple[Resource, str, str, str | None]  # resource, namespace, name, source file


def _targets_from_files(args: argparse.Namespace, session: Session) -> list[Target]:
    targets: list[Target] = []
    for doc in read_documents(args.filename, args.recursive):
        meta = doc.data.get("metadata") if isinstance(doc.data.get("metadata"), dict) else {}
        name = str(meta.get("name") or "")
        try:
            cls = resolve(str(doc.data.get("apiVersion")), str(doc.data.get("kind")))
        except UnknownKind as exc:
            raise CommandError(f'resource mapping not found for name: "{name}" namespace: "{meta.get("namespace") or ""}" '
                               f'from "{doc.source}": {exc}\nensure CRDs are installed first') from None
        ns = str(meta.get("namespace") or session.namespace)
        targets.append((for_class(cls), ns, name, doc.source))
    return targets


def _targets_from_args(args: argparse.Namespace, session: Session) -> list[Target]:
    if not args.args:
        raise CommandError("You must provide one or more resources by argument or filename.")
    if "/" in args.args[0]:
        out: list[Target] = []
        for arg in args.args:
            kind, _, name = arg.partition("/")
            out.append((lookup(kind), session.namespace, name, None))
        return out
    resources = [lookup(t) for t in args.args[0].split(",") if t]
    names = args.args[1:]
    selector = parse_selector(args.selector)
    if names:
        if selector is not None or args.all:
            raise CommandError("name cannot be provided when a selector or --all is specified")
        if len(resources) != 1:
            raise CommandError("you must specify only one resource type when passing names")
        return [(resources[0], session.namespace, n, None) for n in names]
    if selector is None and not args.all:
        raise CommandError("resource(s) were provided, but no name was specified")
    namespace = None if args.all_namespaces else session.namespace
    return [(res, obj.namespace, obj.name, None)
            for res in resources for obj in session.store.list(res.cls, namespace, selector)]


@command
def run_delete(args: argparse.Namespace, session: Session) -> int:
    targets = _targets_from_files(args, session) if args.filename else _targets_from_args(args, session)
    grace = args.grace_period
    if args.force and grace is None:
        grace = 0
    if grace is not None and grace < 0:
        grace = None
    failed = False
    deleted_any = False
    for res, namespace, name, source in targets:
        try:
            session.registry.delete(res.cls, namespace, name, grace)
        except NotFound as exc:
            if not args.ignore_not_found:
                eprint(api_error_message(exc, source, "deleting"))
                failed = True
            continue
        except ApiError as exc:
            eprint(api_error_message(exc, source, "deleting"))
            failed = True
            continue
        deleted_any = True
        print(f'{res.qualified} "{name}" deleted')
    if deleted_any:
        session.reconcile()
    if not targets and not failed:
        print("No resources found")
    return 1 if failed else 0
