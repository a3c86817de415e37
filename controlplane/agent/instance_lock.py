"""One agent per dataplane instance: a second one (a unit started twice, a DaemonSet pod
beside a leftover process) would compile and attach its own programs over the first's,
and both would write the same maps. The agent holds a name in the abstract socket
namespace for as long as it lives — released by the kernel when the process ends, however
it ends, and nothing left on disk. Abstract names belong to a network namespace: an
instance's agents share the node's."""
from __future__ import annotations

import errno
import socket

from controlplane.errors import CommandError


def hold_instance(instance: str) -> socket.socket:
    """The socket that holds `instance` for this process (keep a reference for as long as
    the agent runs); CommandError if another process holds it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(f"\0svcxdp-agent:{instance}")
    except OSError as exc:
        s.close()
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(f"another svcctl agent runs for dataplane instance {instance} on this node: "
                               "stop it first (two would attach their programs over each other's and "
                               "write the same maps)") from None
        raise
    return s
