"""Where the agent attaches XDP: sources of attach targets, none of which is the lab.

    FileAttachPoints(path)   a JSON list written by whoever runs the node's interfaces (the
                             lab writes <state dir>/lab/attach/<node>.json); re-read when it
                             changes. Each entry: netns, ifname, ifindex, peer_netns,
                             peer_ifname (the veth peer that needs a pass-through program).

The InterfaceManager asks its source for the current targets at every refresh.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("svcxdp.agent")


@dataclass(frozen=True)
class Target:
    netns: str
    ifname: str
    ifindex: int
    peer_netns: str = ""
    peer_ifname: str = ""
    role: str = "pod"   # "external": the node's external interface (svcxdp_external)


class FileAttachPoints:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._targets: list[Target] = []

    def __call__(self) -> list[Target]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                entries = json.loads(self.path.read_text())
                self._targets = [Target(e["netns"], e["ifname"], int(e["ifindex"]),
                                        e.get("peer_netns") or "", e.get("peer_ifname") or "",
                                        e.get("role") or "pod")
                                 for e in entries]
                self._stamp = stamp
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("attach points %s unreadable, keeping the last ones: %s", self.path, exc)
        return list(self._targets)
