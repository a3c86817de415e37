"""svcctl: the command line. Each command family lives in its own module that exposes
`register(subparsers)`; this file only assembles them and turns errors into exit codes."""
from __future__ import annotations

import argparse
import importlib
import sys

from controlplane.errors import CommandError

# Modules that contribute subcommands, in help order, with the subcommands each adds (or
# extends: kubectl.affinity adds a resource to `get`). Each has register(subparsers).
COMMAND_MODULES: list[tuple[str, tuple[str, ...]]] = [
    ("controlplane.demo", ("demo",)),
    ("controlplane.lab.commands", ("lab", "exec")),
    ("controlplane.kubectl.apply", ("apply", "create")),
    ("controlplane.kubectl.get", ("get",)),
    ("controlplane.kubectl.affinity", ("get",)),
    ("controlplane.kubectl.flows", ("get",)),
    ("controlplane.kubectl.trace", ("trace",)),
    ("controlplane.kubectl.describe", ("describe",)),
    ("controlplane.kubectl.delete", ("delete",)),
    ("controlplane.kubectl.expose", ("expose",)),
    ("controlplane.kubectl.run", ("run",)),
    ("controlplane.kubectl.scale", ("scale",)),
    ("controlplane.kubectl.lb_pool", ("lb-pool",)),
    ("controlplane.controllers.commands", ("controllers",)),
    ("controlplane.agent.commands", ("agent",)),
    ("controlplane.dataplane.commands", ("dataplane",)),
    ("controlplane.dns.commands", ("dns",)),
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` only (importing just the modules that provide it: a
    read-only command must not pay for the lab's or pyroute2's imports), or for all."""
    parser = argparse.ArgumentParser(prog="svcctl", description="Kubernetes Services on an XDP dataplane")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    wanted = [name for name, commands in COMMAND_MODULES if command in commands]
    for name in wanted or [name for name, _ in COMMAND_MODULES]:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
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
    except Exception as exc:
        line = _store_failure(exc, args)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1


def _store_failure(exc: Exception, args: argparse.Namespace) -> str | None:
    """A store's failure that no command turned into an error line (a URL where something
    other than etcd answers fails every command that opens it) as one: `error: ...`
    naming the store URL, not a traceback. None for any other exception."""
    from controlplane.store.paths import store_failure
    return store_failure(exc, getattr(args, "state_dir", None), getattr(args, "store", None))


if __name__ == "__main__":
    sys.exit(main())
