"""What an apply is given and how it fails: the manifests of a batch and the error that
says which of them failed and why. Apart from the registry so that every command can
print a failed batch without importing the registry's machinery."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Manifest:
    """One document to apply: the raw dict and the file it came from ("-" for stdin)."""

    data: dict[str, Any]
    source: str = "-"


class Refused(Exception):
    """A document kubectl itself refuses before sending anything (printed `error: ...`)."""


@dataclass
class Failure:
    manifest: Manifest | None
    error: Exception        # ApiError, UnknownKind or Refused
    verb: str               # "creating" | "patching" ...
    name: str = ""
    namespace: str = ""


class BatchError(Exception):
    """Nothing was written; `failures` says which documents failed and why."""

    def __init__(self, failures: list[Failure]) -> None:
        super().__init__("; ".join(str(f.error) for f in failures))
        self.failures = failures
