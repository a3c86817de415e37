"""svcctl dataplane ...: look into (or remove) a node's pinned XDP dataplane. Knows neither
the lab nor the CLI: a lab records its nodes' instances in <state dir>/instances.json."""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from controlplane.errors import CommandError

from .config import DataplaneConfig

if TYPE_CHECKING:   # for annotations only: importing the model costs every svcctl command ~15 ms
    from .model import Frontend


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataplane", help="inspect or reset a node's XDP dataplane (pinned maps)")
    dsub = p.add_subparsers(dest="dataplane_command", metavar="ACTION")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    for name, helptext, func in (
            ("stats", "datapath counters and per-service packets/bytes/new flows/rejects", cmd_stats),
            ("services", "the services and backends the maps hold", cmd_services),
            ("reset", "remove the pinned maps of an instance (its flows and services)", cmd_reset)):
        c = dsub.add_parser(name, help=helptext, epilog=None if name == "reset" else SCOPE_HELP)
        who = c.add_mutually_exclusive_group(required=True)
        who.add_argument("--node", help="a node of the lab in --state-dir (or, without a lab, an agent's --node)")
        who.add_argument("--instance", help="a dataplane instance name (/sys/fs/bpf/svcxdp/INSTANCE)")
        c.add_argument("--state-dir", help="state folder (default $SVCXDP_STATE_DIR or /var/lib/svcxdp)")
        c.set_defaults(func=func)


INSTANCES_FILE = "instances.json"   # <state dir>/instances.json: {node: instance}, written by whoever runs agents


def _state_dir(args: argparse.Namespace) -> Path:
    from controlplane.store.paths import resolve_state_dir
    return resolve_state_dir(args.state_dir)


def _recorded(args: argparse.Namespace) -> dict[str, str]:
    """{node: instance} recorded in the state folder; {} when none is."""
    try:
        recorded = json.loads((_state_dir(args) / INSTANCES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _instance(args: argparse.Namespace) -> str:
    """--instance, else the instance recorded for --node in the state folder (the lab records
    its nodes'), else the node name itself (a real node's agent uses it)."""
    if args.instance:
        return args.instance
    return _recorded(args).get(args.node, args.node)


def open_maps(args: argparse.Namespace):
    """The node's pinned maps for reading only, opened in milliseconds (pinned.py):
    no program is built, so what is read is the state of the moment asked about."""
    from .pinned import PinnedMaps
    config = DataplaneConfig(instance=_instance(args))
    if not (Path(config.pin_dir) / "services").exists():
        raise CommandError(f"no dataplane pinned at {config.pin_dir} ({_missing_why(args)})")
    return PinnedMaps(config.pin_dir)


def _missing_why(args: argparse.Namespace) -> str:
    """A --node the state folder's lab does not have is most likely a typo: name the
    nodes it has. Otherwise (a node of the lab, a real node) its agent is not running."""
    recorded = _recorded(args)
    node = getattr(args, "node", None)
    if node and recorded and node not in recorded:
        return f"the lab in {_state_dir(args)} has no node {node}; its nodes: {', '.join(sorted(recorded))}"
    return "is the agent running?"


def cmd_stats(args: argparse.Namespace) -> int:
    from . import readout
    maps = open_maps(args)
    try:
        counters = readout.counters(maps)
        print("DATAPATH COUNTER      PACKETS")
        for name, value in counters.items():
            print(f"{name:<21} {value}")
        aff = readout.affinity(maps, counters["affinity_new"])
        print(f"\nAFFINITY ENTRIES   {aff.entries} of {aff.capacity} (inserted {aff.inserted}, "
              f"evicted by LRU {aff.evicted})")
        rows = [("FRONTEND", "SCOPE", "PACKETS", "BYTES", "NEW FLOWS", "REJECTS")]
        installed = readout.services(maps)
        scopes = scope_labels(installed)
        for fe, svc in sorted(installed.items()):
            s = readout.service_stats(maps, svc.svc_id)
            rows.append((str(fe), scopes[fe], *(str(s[f]) for f in readout.STAT_FIELDS)))
        print()
        _table(rows)
        return 0
    finally:
        maps.close()


def cmd_services(args: argparse.Namespace) -> int:
    from . import readout
    maps = open_maps(args)
    try:
        rows = [("FRONTEND", "SCOPE", "ALGORITHM", "AFFINITY", "BACKENDS")]
        installed = readout.services(maps)
        scopes = scope_labels(installed)
        for fe, svc in sorted(installed.items()):
            state = svc.state
            ends = ",".join(f"{b.ip}:{b.port}{'' if b.state == 'active' else '(' + b.state + ')'}"
                            for b in state.backends) or "<none>"
            rows.append((str(fe), scopes[fe], state.algorithm,
                         f"{state.affinity_timeout}s" if state.affinity_timeout else "None", ends))
        _table(rows)
        return 0
    finally:
        maps.close()


def cmd_reset(args: argparse.Namespace) -> int:
    from .program import reset
    config = DataplaneConfig(instance=_instance(args))
    print(f"dataplane {config.instance}: {'removed ' + str(config.pin_dir) if reset(config) else 'nothing pinned'}")
    return 0


SCOPE_HELP = ("SCOPE: external = the way in from outside (the node's external interface: traffic policy, "
              "source ranges); cluster = its twin for pods and the node (every endpoint); blank = a ClusterIP")


def scope_labels(installed: Mapping[Frontend, object]) -> dict[Frontend, str]:
    """What the SCOPE column says of each frontend. A NodePort, LB IP or externalIP is
    installed twice at one address:port, its external entry and its cluster-scope twin,
    whose backends differ (Local policy); the column tells the two rows apart. A ClusterIP
    has only the one scope: its cell stays blank, so that scripts splitting a ClusterIP's
    row on whitespace find its columns where they were before the column came."""
    external = {(fe.vip, fe.port, fe.protocol) for fe in installed if fe.scope == "external"}
    return {fe: fe.scope if fe.scope == "external" or (fe.vip, fe.port, fe.protocol) in external else ""
            for fe in installed}


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
