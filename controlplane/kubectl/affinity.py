"""svcctl get affinity [SERVICE] [--node NODE] [-n NS | -A]

ClientIP session affinity as a node's XDP dataplane holds it: which client IP
sticks to which pod of which Service, and for how much longer. Entries are per
node (each node's datapath remembers the clients it served), read from the pinned
`affinity` map; the remaining time is computed on the datapath's own clock.

`get` belongs to controlplane.kubectl.get; this module adds the `affinity`
resource to it (and --node) by wrapping that parser's function, so it must be
registered after it.
"""
from __future__ import annotations

import argparse
import sys

from controlplane.errors import CommandError
from controlplane.controllers.service_view import load_service_views

from .frontends import Owners
from .printers.age import human_duration
from .printers.table import format_table
from .session import Session, command, eprint

RESOURCE_NAMES = ("affinity", "affinities", "sessionaffinity")
HEADER = ["SERVICE", "CLIENT IP", "BACKEND", "REMAINING"]


def register(sub: argparse._SubParsersAction) -> None:
    get = sub.choices.get("get")
    if get is None:
        raise RuntimeError("controlplane.kubectl.affinity must be registered after controlplane.kubectl.get")
    get.add_argument("--node", default=None,
                     help="get affinity: the node whose dataplane to read (default: every node of the lab)")
    objects = get.get_default("func")

    def dispatch(args: argparse.Namespace) -> int:
        if args.args and args.args[0].lower() in RESOURCE_NAMES:
            return run_get_affinity(args)
        if args.node:
            raise CommandError("--node applies to `get affinity` only")
        return objects(args)
    get.set_defaults(func=dispatch)


def rows(entries_by_node: dict[str, list], known: Owners, with_node: bool, with_namespace: bool,
         with_frontend: bool = False, service: str | None = None) -> list[list[str]]:
    """Table rows (no header) for the entries whose frontend belongs to a service of
    `known` (named `service`, when given): its ClusterIP, and its ways in from outside
    (NodePort, LoadBalancer IPs, externalIPs) with their twins for pods and the node,
    each with entries of its own."""
    out = []
    for node, entries in entries_by_node.items():
        for e in entries:
            owner = known.of(e.frontend)
            if owner is None or (service is not None and owner.service != service):
                continue
            if e.backend is None:
                backend = "<left>"
            else:
                backend = owner.pods.get(e.backend) or f"{e.backend[0]}:{e.backend[1]}"
            label = f"{owner.service}:{owner.port}" if owner.port else owner.service
            row = [label, e.client, backend, human_duration(e.remaining_s)]
            if with_frontend:
                fe = e.frontend
                row.insert(1, f"{fe.vip}:{fe.port}/{fe.protocol}")
            if with_namespace:
                row.insert(0, owner.namespace)
            if with_node:
                row.insert(0, node)
            out.append(row)
    return out


def _nodes(args: argparse.Namespace) -> list[str]:
    if args.node:
        return [args.node]
    from controlplane.lab.topology import Lab
    status = Lab(args.state_dir).status()
    if status.outside is None:
        raise CommandError("no lab is up: say which agent's dataplane to read with --node")
    return [n.name for n in status.nodes]


def read_node(node: str, state_dir: str | None) -> list:
    """Live affinity entries of one node's dataplane."""
    from controlplane.dataplane.affinity_maps import live_entries
    from controlplane.dataplane.commands import open_maps
    maps = open_maps(argparse.Namespace(node=node, instance=None, state_dir=state_dir))
    try:
        return live_entries(maps)
    finally:
        maps.close()


@command(missing="empty")
def run_get_affinity(args: argparse.Namespace, session: Session) -> int:
    names = args.args[1:]
    if len(names) > 1:
        raise CommandError("get affinity takes at most one SERVICE name")
    if args.output not in (None, "wide"):
        raise CommandError("get affinity: only the table output (and -o wide) is supported")
    namespace = None if args.all_namespaces else session.namespace
    # Every service's frontends, even for one service's entries: an entry is then told
    # by its own address before a nodePort number could claim it for another.
    views = load_service_views(session.store, namespace)
    if names and not any(v.service.name == names[0] for v in views):
        eprint(f'Error from server (NotFound): services "{names[0]}" not found')
        return 1
    known = Owners(views)
    nodes = _nodes(args)
    entries = {node: read_node(node, args.state_dir) for node in nodes}
    wide = args.output == "wide"
    table = rows(entries, known, with_node=len(nodes) > 1 or wide, with_namespace=args.all_namespaces,
                 with_frontend=wide, service=names[0] if names else None)
    if not table:
        print("No affinity entries found" + (f" for service {names[0]}" if names else "") + ".",
              file=sys.stderr)
        return 0
    header = list(HEADER)
    if wide:
        header.insert(1, "FRONTEND")
    if args.all_namespaces:
        header.insert(0, "NAMESPACE")
    if len(nodes) > 1 or args.output == "wide":
        header.insert(0, "NODE")
    print(format_table(table if args.no_headers else [header] + table))
    return 0
