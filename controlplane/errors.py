"""Errors every layer may raise and the CLI turns into exit codes. Kept apart from
controlplane.cli so that no command module imports the CLI's entry point (which,
run as `python -m controlplane.cli`, would be a second copy of it)."""
from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure: printed as `error: <message>` with a non-zero exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
