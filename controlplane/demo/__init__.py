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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.part == "packets":
        from .packets import run_packet_demo
        return run_packet_demo()
    from .walkthrough import run_walkthrough
    return run_walkthrough(nodes=args.nodes, keep=args.keep)
