"""Opening the store for a command, and turning failures into kubectl-style output.

`@command` wraps a command function `fn(args, session) -> int`: it opens the store and the
registry, and prints ApiError / BatchError / input errors the way kubectl does (to stderr,
exit code 1). Flag mistakes raise controlplane.errors.CommandError (`error: ...`).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from dataclasses import dataclass
from typing import Callable

from controlplane.api.errors import ApiError
from controlplane.api.manifest import ManifestError
from controlplane.api.selectors import Selector, SelectorParseError
from controlplane.errors import CommandError
from controlplane.controllers.config import ConfigError
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import BatchError, Registry
from controlplane.store import StoreUnavailable
from controlplane.store.interface import Store
from controlplane.store.paths import open_store_from_args

from .errors import api_error_message, batch_messages
from .files import InputError
from .resources import UnknownResource


@dataclass
class Session:
    store: Store
    registry: Registry
    namespace: str              # -n, or "default"
    namespace_given: bool       # whether -n was passed

    def reconcile(self) -> None:
        reconcile(self.store)


def eprint(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def parse_selector(text: str | None) -> Selector | None:
    if not text:
        return None
    try:
        return Selector.parse(text)
    except SelectorParseError as exc:
        raise CommandError(f"unable to parse requirement: {exc}") from None


def command(fn: Callable[[argparse.Namespace, Session], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            store = open_store_from_args(args)
        except StoreUnavailable as exc:
            raise CommandError(str(exc)) from None
        try:
            registry = Registry(store)
            ns = getattr(args, "namespace", None)
            return fn(args, Session(store, registry, ns or "default", ns is not None))
        except BatchError as exc:
            eprint(*batch_messages(exc))
            return 1
        except ApiError as exc:
            eprint(api_error_message(exc))
            return 1
        except (InputError, ManifestError, UnknownResource, ConfigError, StoreUnavailable) as exc:
            raise CommandError(str(exc)) from None
        except BrokenPipeError:  # `svcctl get ... | head`: the reader left, which is fine
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
        finally:
            store.close()
    return run
