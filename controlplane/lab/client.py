"""A temporary client pod, as `kubectl run NAME --rm -it --image=busybox -- sh` makes one.

`run_client_pod(args)` is what `svcctl run ... --rm -it` calls; it takes the parsed
arguments and reads only the attributes below, all optional.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Any

from controlplane import cgroups
from controlplane.errors import CommandError
from controlplane.lab import netns
from controlplane.lab.images import parse_image
from controlplane.lab.topology import Lab, LabError

DEFAULT_NODE = "node1"


def _busybox_applets() -> set[str]:
    try:
        out = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return set(out.split())


def client_argv(image: str, command: Sequence[str]) -> list[str]:
    """The command as the image would run it: in a busybox image `sh` or `wget` is busybox's."""
    argv = list(command) or ["sh"]
    _, base, _ = parse_image(image)
    if base.startswith("busybox") and argv[0] in _busybox_applets():
        argv = ["busybox", *argv]
    return argv


def run_temporary_pod(
    lab: Lab,
    name: str,
    command: Sequence[str] = (),
    image: str = "busybox",
    node: str | None = DEFAULT_NODE,
    interactive: bool = True,
    remove: bool = True,
) -> int:
    """Create pod `name`, run command in it (inheriting our terminal if interactive), then
    remove the pod unless remove=False. Returns the command's exit code."""
    pod = lab.add_pod(name, node, image)
    try:
        env = {**os.environ, "HOSTNAME": name, "PS1": r"\w \$ "}
        proc = subprocess.run(
            cgroups.command(lab.cgroup_for(name), netns.command(pod.netns, client_argv(image, command))),
            stdin=None if interactive else subprocess.DEVNULL,
            cwd="/",
            env=env,
        )
        return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    finally:
        if remove:
            lab.remove_pod(name)


def run_client_pod(args: Any) -> int:
    """Reads args.name (default "client-<pid>"), args.image ("busybox"), args.command
    (["sh"]), args.node ("node1"), args.rm (True), args.stdin / args.tty (interactive if
    either is set) and args.state_dir."""
    name = getattr(args, "name", None) or f"client-{os.getpid()}"
    interactive = bool(getattr(args, "stdin", False) or getattr(args, "tty", False) or getattr(args, "interactive", False))
    try:
        return run_temporary_pod(
            Lab(getattr(args, "state_dir", None)),
            name,
            command=list(getattr(args, "command", None) or []),
            image=getattr(args, "image", None) or "busybox",
            node=getattr(args, "node", None) or DEFAULT_NODE,
            interactive=interactive,
            remove=getattr(args, "rm", True),
        )
    except (LabError, netns.NetnsError) as exc:   # no lab here, no such node: one line, not a traceback
        raise CommandError(f"run --rm: {exc}") from None
    except PermissionError as exc:
        if os.geteuid() == 0:
            raise
        raise CommandError(f"run --rm must run as root (a client pod is a lab namespace): "
                           f"{exc.strerror}: {exc.filename}") from None
