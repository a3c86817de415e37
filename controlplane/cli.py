"""svcctl: the command line. Each command family lives in its own module that exposes
`register(subparsers)`; this file only assembles them and turns errors into exit codes."""
from __future__ import annotations

import argparse
import importlib
import sys

from controlplane.errors import CommandError

# Modules that contribute subcommands, in help order. Each has register(subparsers).
COMMAND_MODULES = [
    "controlplane.demo",
    "controlplane.lab.commands",
    "controlplane.kubectl.apply",
    "controlplane.kubectl.get",
    "controlplane.kubectl.affinity",
    "controlplane.kubectl.describe",
    "controlplane.kubectl.delete",
    "controlplane.kubectl.expose",
    "controlplane.kubectl.run",
    "controlplane.kubectl.scale",
    "controlplane.kubectl.lb_pool",
    "controlplane.controllers.commands",
    "controlplane.agent.commands",
    "controlplane.dataplane.commands",
    "controlplane.dns.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svcctl", description="Kubernetes Services on an XDP dataplane")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `svcctl exec HOST -- CMD ARGS` and `svcctl run NAME --rm -it ... -- CMD`: what follows
    # `--` is the command, whatever it looks like, as with kubectl.
    trailing = None
    if "--" in argv:
        cut = argv.index("--")
        argv, trailing = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if trailing is not None:
        if not hasattr(args, "command") or args.command not in (None, []):
            parser.error(f"{args.command or 'this command'}: unexpected arguments after --")
        args.command = trailing
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
