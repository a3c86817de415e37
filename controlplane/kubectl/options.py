"""Flags shared by the kubectl-shaped commands."""
from __future__ import annotations

import argparse

from controlplane.store.paths import add_store_flags


def common_parent() -> argparse.ArgumentParser:
    """--state-dir, --store (and its TLS flags) and -n/--namespace, accepted by every command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--state-dir", default=None,
                        help="store folder (default $SVCXDP_STATE_DIR or /var/lib/svcxdp)")
    add_store_flags(parent)
    parent.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    return parent


def add_output(parser: argparse.ArgumentParser, choices: tuple[str, ...] = ("wide", "json", "yaml", "name")) -> None:
    parser.add_argument("-o", "--output", default=None, choices=choices, help="output format")


def add_files(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("-f", "--filename", action="append", default=[], required=required,
                        help="manifest file, directory, or - for stdin (repeatable)")
    parser.add_argument("-R", "--recursive", action="store_true", help="walk directories recursively")


def add_selector(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-l", "--selector", default=None, help="label selector, e.g. app=nginx,tier!=db")


def add_node_timeouts(parser: argparse.ArgumentParser) -> None:
    """The conntrack timeouts a node's program was built with (`svcctl agent` flags of the
    same names): compiled into it, not kept in a map, so said here when not the defaults."""
    # the defaults from the shared header, not dataplane.flows: every `svcctl get` builds
    # this parser, and flows' imports cost a read-only command ~60 ms
    from controlplane.dataplane.layout import const
    for flag, name in (("--tcp-timeout", "DEFAULT_TCP_TIMEOUT_S"),
                       ("--tcp-close-timeout", "DEFAULT_TCP_CLOSE_TIMEOUT_S"),
                       ("--tcp-half-close-timeout", "DEFAULT_TCP_HALF_CLOSE_TIMEOUT_S"),
                       ("--udp-timeout", "DEFAULT_UDP_TIMEOUT_S")):
        default = const(name)
        parser.add_argument(flag, type=int, default=default, metavar="S",
                            help=f"the agent's {flag} (default {default})")


def node_timeouts(args: argparse.Namespace):
    from controlplane.dataplane.flows import Timeouts
    return Timeouts(args.tcp_timeout, args.tcp_close_timeout, args.udp_timeout, args.tcp_half_close_timeout)
