"""`svcctl dataplane stats|services` tell a NodePort's (LB IP's, externalIP's) two entries
apart: its external one (traffic policy: here Local with no endpoint on this node) and its
cluster-scope twin for pods and the node (every endpoint), one row each at the same
address:port, by the SCOPE column. A ClusterIP's row keeps its columns where they were."""
from __future__ import annotations

import pytest

from controlplane.dataplane.model import Backend, Frontend, ServiceState

from .harness import BACKENDS, VIP, Harness
# the pins of test_dataplane_readout (every map both commands read) and its bcc-free svcctl
from .test_dataplane_readout import pinned, svcctl  # noqa: F401 (pinned: a fixture)

pytestmark = pytest.mark.root

NODE_PORT = "192.168.1.31:30090/TCP"


def rows(out: str, frontend: str) -> dict[str, list[str]]:
    """SCOPE -> the rest of the row, of `frontend`'s rows (columns split on whitespace)."""
    found = [line.split() for line in out.splitlines() if line.startswith(frontend + " ")]
    return {r[1]: r[2:] for r in found}


def test_a_node_ports_external_entry_and_its_twin_are_told_apart(xdp: Harness, pinned: str):  # noqa: F811
    xdp.writer.upsert(ServiceState(Frontend(VIP, 80, "TCP"), tuple(Backend(ip, 8080) for ip in BACKENDS), "rr"))
    xdp.writer.upsert(ServiceState(Frontend("192.168.1.31", 30090, "TCP", "external"), (), "random",
                                   local_drop=True))
    xdp.writer.upsert(ServiceState(Frontend("192.168.1.31", 30090, "TCP"), (Backend(BACKENDS[0], 8080),), "random"))
    services = svcctl("dataplane", "services", "--instance", pinned)
    assert services.splitlines()[0].split()[:3] == ["FRONTEND", "SCOPE", "ALGORITHM"]
    assert rows(services, NODE_PORT) == {"external": ["random", "None", "<none>"],
                                         "cluster": ["random", "None", f"{BACKENDS[0]}:8080"]}
    clusterip = [line.split() for line in services.splitlines() if line.startswith(VIP)]
    assert [r[:3] for r in clusterip] == [[f"{VIP}:80/TCP", "rr", "None"]]     # no SCOPE word: a ClusterIP
    stats = svcctl("dataplane", "stats", "--instance", pinned)
    header = next(line for line in stats.splitlines() if line.startswith("FRONTEND"))
    assert header.split()[:3] == ["FRONTEND", "SCOPE", "PACKETS"], stats
    assert set(rows(stats, NODE_PORT)) == {"external", "cluster"}
    assert all(len(r) == 4 for r in rows(stats, NODE_PORT).values())             # packets, bytes, new flows, rejects
