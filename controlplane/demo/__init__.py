"""svcctl demo: what the project does, shown with real packets and real clients."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show svcxdp at work (packets through the XDP program)")
    p.add_argument("part", nargs="?", default="packets", choices=["packets"],
                   help="packets: scapy packets through the loaded XDP program (BPF_PROG_TEST_RUN)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .packets import run_packet_demo
    return run_packet_demo()
