"""svcctl scale deployment NAME --replicas N"""
from __future__ import annotations

import argparse

from controlplane.api.deployment import Deployment
from controlplane.api.errors import Conflict
from controlplane.errors import CommandError

from .options import common_parent
from .resources import lookup
from .session import Session, command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", parents=[common_parent()], help="set a deployment's replica count")
    p.add_argument("args", nargs="+", metavar="deployment NAME | deployment/NAME")
    p.add_argument("--replicas", type=int, default=None)
    p.add_argument("--current-replicas", type=int, default=None, help="precondition: only scale if it is this")
    p.set_defaults(func=run_scale)


@command
def run_scale(args: argparse.Namespace, session: Session) -> int:
    if args.replicas is None or args.replicas < 0:
        raise CommandError("The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0")
    kind, _, inline = args.args[0].partition("/")
    names = ([inline] if inline else []) + args.args[1:]
    res = lookup(kind)
    if res.cls is not Deployment:
        raise CommandError(f"cannot scale {res.plural}: only deployments have replicas here")
    if not names:
        raise CommandError("resource(s) were provided, but no name was specified")
    for name in names:
        for _ in range(10):  # retry on a concurrent writer (optimistic concurrency)
            dep = session.store.get(Deployment, session.namespace, name)
            if args.current_replicas is not None and dep.replicas != args.current_replicas:
                raise CommandError(f"Expected replicas to be {args.current_replicas}, was {dep.replicas}")
            dep.spec.replicas = args.replicas
            try:
                session.registry.update(dep)
                break
            except Conflict:
                continue
        print(f"{res.ref(name)} scaled")
    session.reconcile()
    return 0
