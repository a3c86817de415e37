"""svcctl demo: what the project does, shown with real packets and real clients."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="replay the ClusterIP walkthrough on an embedded lab cluster")
    p.add_argument("part", nargs="?", default="walkthrough", choices=["walkthrough", "packets"],
                   help="walkthrough (default): lab cluster, svcctl and real clients; "
                        "packets: scapy packets through the XDP program (BPF_PROG_TEST_RUN)")
    p.add_argument("--keep", action="store_true", help="leave the demo lab up to play with")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--state-dir", default=None,
                   help="the demo's lab and store go in <dir>/demo, removed when it ends unless --keep "
                        "(default $SVCXDP_STATE_DIR or /var/lib/svcxdp)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.part == "packets":
        from .packets import run_packet_demo
        return run_packet_demo()
    from controlplane.errors import CommandError
    from controlplane.lab.topology import LabError

    from .walkthrough import run_walkthrough
    try:
        return run_walkthrough(nodes=args.nodes, keep=args.keep, state_dir=args.state_dir)
    except LabError as exc:   # e.g. another state dir's demo lab is up
        raise CommandError(f"demo: {exc}") from None
