"""svcctl demo (placeholder registration; filled in with the dataplane)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="load the XDP dataplane and show packets going through it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("demo: not yet built")
