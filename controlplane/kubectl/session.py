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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from controlplane.api.errors import ApiError
from controlplane.api.manifest import ManifestError
from controlplane.api.selectors import Selector, SelectorParseError
from controlplane.errors import CommandError
from controlplane.controllers.batch import BatchError
from controlplane.controllers.config import ConfigError
from controlplane.store import StoreUnavailable
from controlplane.store.interface import Store
from controlplane.store.paths import open_store_from_args, resolve_state_dir, store_is_temporary

from .errors import api_error_message, batch_messages
from .files import InputError
from .resources import UnknownResource

if TYPE_CHECKING:
    from controlplane.controllers.registry import Registry


@dataclass
class Session:
    store: Store
    namespace: str              # -n, or "default"
    namespace_given: bool       # whether -n was passed
    _registry: "Registry | None" = field(default=None, repr=False)

    @property
    def registry(self) -> "Registry":
        """The write path, made on first use: the registry and the controllers cost a
        read-only command (`get`, `describe`) ~60 ms of imports it does not need."""
        if self._registry is None:
            from controlplane.controllers.registry import Registry
            self._registry = Registry(self.store)
        return self._registry

    def reconcile(self) -> None:
        from controlplane.controllers.manager import reconcile
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


def command(fn: Callable[[argparse.Namespace, Session], int] | None = None, *,
            missing: str = "create") -> Callable:
    """`@command` (a writing command: it makes the store if the state directory has none),
    `@command(missing="error")` for one that only reads the store: on a state directory
    without a store it fails (`error: no store in state directory ...`) and creates nothing;
    `@command(missing="empty")` for one that reads the dataplane and names what it finds
    from the store (trace, get flows): without a store it names nothing, saying so, and
    creates nothing (a state directory that does not exist is an error)."""
    if fn is None:
        return functools.partial(command, missing=missing)

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            store = open_store_from_args(args, missing=missing)
            if missing == "empty" and store_is_temporary(store):
                eprint(f"note: no store in state directory {resolve_state_dir(getattr(args, 'state_dir', None))}: "
                       "Services and pods are not named")
        except StoreUnavailable as exc:
            raise CommandError(str(exc)) from None
        try:
            ns = getattr(args, "namespace", None)
            return fn(args, Session(store, ns or "default", ns is not None))
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
