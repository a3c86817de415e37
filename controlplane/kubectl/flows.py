"""svcctl get flows --node N [--service S] [--protocol P] [--client IP] [--backend IP[:PORT]]
[--expired] [-o wide|json]

A node's connection tracking as its XDP dataplane holds it, as `conntrack -L` shows the
kernel's: protocol, client, the frontend it addressed, the backend it goes to, the node
address:port of a NodePort flow source-NATed to another node, state, idle time and time
left. Read from the pinned `conntrack` (confirmed flows), `ct_unconfirmed` and
`ct_unconfirmed_pod` (flows that sent one packet so far, from outside and from pods) in
batches (controlplane.dataplane.flows).

`get` belongs to controlplane.kubectl.get; like kubectl.affinity this module adds a
resource to it by wrapping that parser's function, so it is registered after both.
"""
from __future__ import annotations

import argparse
import json
import sys

from controlplane.controllers.service_view import load_service_views
from controlplane.errors import CommandError

from .frontends import FrontendOwner, Owners
from .options import add_node_timeouts, node_timeouts
from .printers.age import human_duration
from .session import Session, command, eprint

RESOURCE_NAMES = ("flows", "flow", "conntrack")
FLOW_FLAGS = ("service", "protocol", "client", "backend", "expired")


def register(sub: argparse._SubParsersAction) -> None:
    get = sub.choices.get("get")
    if get is None or "--node" not in get._option_string_actions:
        raise RuntimeError("controlplane.kubectl.flows must be registered after kubectl.get and kubectl.affinity")
    get.add_argument("--service", default=None, help="get flows: only this Service's (in -n)")
    get.add_argument("--protocol", default=None, type=str.upper, choices=("TCP", "UDP"),
                     help="get flows: only this protocol")
    get.add_argument("--client", default=None, metavar="IP", help="get flows: only this client address")
    get.add_argument("--backend", default=None, metavar="IP[:PORT]", help="get flows: only to this backend")
    get.add_argument("--expired", action="store_true",
                     help="get flows: also entries idle past their timeout that the LRU has not reclaimed")
    add_node_timeouts(get)
    previous = get.get_default("func")

    def dispatch(args: argparse.Namespace) -> int:
        if args.args and args.args[0].lower() in RESOURCE_NAMES:
            return run_get_flows(args)
        given = [f"--{f}" for f in FLOW_FLAGS if getattr(args, f)]
        if given:
            raise CommandError(f"{', '.join(given)}: for `get flows` only")
        return previous(args)
    get.set_defaults(func=dispatch)


def _check_address(text: str | None, flag: str, port_allowed: bool) -> None:
    import ipaddress
    if text is None:
        return
    addr, _, port = text.partition(":")
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise CommandError(f"{flag} {text!r}: {addr!r} is not an IPv4 address") from None
    if port and (not port_allowed or not port.isdigit() or not 1 <= int(port) <= 65535):
        raise CommandError(f"{flag} {text!r}: " + ("port must be 1-65535" if port_allowed else "an address only"))


@command(missing="empty")
def run_get_flows(args: argparse.Namespace, session: Session) -> int:
    from controlplane.dataplane import flows as dpflows
    from controlplane.dataplane import readout
    from controlplane.dataplane.commands import open_maps
    if len(args.args) > 1:
        raise CommandError("get flows takes no NAME: filter with --service, --client, --backend, --protocol")
    if args.output not in (None, "wide", "json"):
        raise CommandError("get flows: output formats are the table, -o wide and -o json")
    if not args.node:
        raise CommandError("get flows: say which node's dataplane to read with --node")
    _check_address(args.client, "--client", port_allowed=False)
    _check_address(args.backend, "--backend", port_allowed=True)
    owners = Owners(load_service_views(session.store, None))
    maps = open_maps(argparse.Namespace(node=args.node, instance=None, state_dir=args.state_dir))
    try:
        by_id: dict[int, FrontendOwner | None] = {
            svc_id: owners.of(fe) for fe, svc_id in readout.frontends(maps).items()}
        svc_ids = None
        if args.service:
            ns = session.namespace
            svc_ids = frozenset(i for i, o in by_id.items() if o and (o.namespace, o.service) == (ns, args.service))
            if not svc_ids and not any(v.service.name == args.service for v in load_service_views(session.store, ns)):
                eprint(f'Error from server (NotFound): services "{args.service}" not found')
                return 1
        flt = dpflows.FlowFilter(svc_ids, args.protocol, args.client, args.backend, args.expired)
        table = dpflows.FlowTable()
        flows = dpflows.iter_flows(maps, table, flt, node_timeouts(args))
        if args.output == "json":
            write_json(flows, table, by_id, args.node)
            return 0
        shown = write_table(flows, by_id, wide=args.output == "wide", headers=not args.no_headers)
    finally:
        maps.close()
    summary = ", ".join(f"{name} {sum(kinds.values())} of {table.capacity[name]} entries"
                        for name, kinds in table.entries.items())
    print(f"{shown} flows shown ({summary})", file=sys.stderr)
    return 0


def _addr(a) -> str:
    return "null" if a is None else f'{{"ip": "{a[0]}", "port": {a[1]}}}'


def flow_json(f, owner: str) -> str:
    """One flow as a JSON object, by template: every value is a number, an address or a
    fixed word (the owner is given already encoded), so nothing needs escaping and a
    million are written ~3x faster than through json.dumps."""
    return (f'{{"table": "{f.table}", "protocol": "{f.protocol}", "client": {_addr(f.client)}, '
            f'"frontend": {_addr(f.frontend)}, "backend": {_addr(f.backend)}, "snat": {_addr(f.snat)}, '
            f'"state": "{f.state}", "idle_s": {round(f.idle_s, 3)}, "remaining_s": {round(f.remaining_s, 3)}, '
            f'"service": {owner}, "svc_id": {f.svc_id}, "backend_id": {f.backend_id}, '
            f'"counted": {"true" if f.counted else "false"}}}')


def write_json(flows, table, by_id: dict, node: str) -> None:
    """One JSON document, written a flow per line as it is read (a million flows are
    never held); the tables' entry counts come last, once they are read."""
    dumps = json.dumps
    owners = {i: dumps(None if o is None else {"namespace": o.namespace, "name": o.service, "port": o.port,
                                               "kind": o.kind}) for i, o in by_id.items()}
    out = sys.stdout
    out.write(f'{{"node": {dumps(node)}, "flows": [')
    lines = []
    for i, f in enumerate(flows):
        lines.append(("\n" if i == 0 else ",\n") + flow_json(f, owners.get(f.svc_id, "null")))
        if len(lines) >= 4096:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines) + f'\n], "entries": {dumps(table.entries)}, "capacity": {dumps(table.capacity)}}}\n')


def write_table(flows, by_id: dict, wide: bool, headers: bool) -> int:
    """Fixed-width columns (a million rows are written as they are read, without measuring
    them first). Returns how many."""
    out = sys.stdout
    fmt = "{:<5} {:<21} {:<21} {:<21} {:<21} {:<11} {:<7} {:<7} {}"
    head = ["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "STATE", "IDLE", "EXPIRES", "SERVICE"]
    if wide:
        fmt += " {:<11} {} {}"
        head += ["TABLE", "SVC-ID", "BACKEND-ID"]
    if headers:
        out.write(fmt.format(*head).rstrip() + "\n")
    labels = {i: (o.label if o else "-") for i, o in by_id.items()}
    from controlplane.dataplane.flows import TABLE_LABELS
    lines = []
    n = 0
    for n, f in enumerate(flows, 1):
        row = [f.protocol, f"{f.client[0]}:{f.client[1]}", f"{f.frontend[0]}:{f.frontend[1]}",
               f"{f.backend[0]}:{f.backend[1]}", f"{f.snat[0]}:{f.snat[1]}" if f.snat else "-", f.state,
               _duration(f.idle_s), _duration(f.remaining_s) if f.remaining_s >= 0 else "-",
               labels.get(f.svc_id, "-")]
        if wide:
            row += [TABLE_LABELS[f.table], f.svc_id, f.backend_id]
        lines.append(fmt.format(*row))
        if len(lines) >= 4096:
            out.write("\n".join(lines) + "\n")
            lines.clear()
    if lines:
        out.write("\n".join(lines) + "\n")
    return n


_durations: dict[int, str] = {}


def _duration(seconds: float) -> str:
    s = int(seconds)
    text = _durations.get(s)
    if text is None:
        text = _durations[s] = human_duration(s)
    return text
