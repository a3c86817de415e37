"""kubectl-shaped svcctl commands over the embedded store.

One module per command family, each with `register(subparsers)` (listed in
controlplane.cli.COMMAND_MODULES): apply (apply, create), get, describe, delete, expose, run,
scale. Shared pieces: options (common flags), session (opening the store, printing errors),
resources (type names and aliases), files (-f inputs), printers (tables, json/yaml/name).
"""
