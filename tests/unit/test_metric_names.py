"""The agent's metric names for the maps' ids (controlplane/agent/metric_names.py): pure."""
from __future__ import annotations

from types import SimpleNamespace

from controlplane.agent.metric_names import Naming
from controlplane.dataplane.model import Frontend


def test_every_backend_series_of_one_address_is_its_own():
    """TCP and UDP on one address:port, and an external frontend beside its cluster-scope
    twin, share address, port and backends: their backend series must still differ (a
    scrape with identical label sets loses all but one sample)."""
    naming = Naming()
    frontends = [Frontend("192.168.1.31", 30080, "TCP", "external"), Frontend("192.168.1.31", 30080, "TCP", "cluster"),
                 Frontend("192.168.1.31", 30080, "UDP", "external")]
    for i, fe in enumerate(frontends):
        naming.add(fe, SimpleNamespace(svc_id=i + 1, backend_ids={("10.244.2.7", 8080): 10 + i}), "default/web:http")
    assert len(set(naming.backends.values())) == 3 and len(set(naming.backend_heads.values())) == 3
    naming.remove(frontends[1], SimpleNamespace(svc_id=2, backend_ids={("10.244.2.7", 8080): 11}))
    assert set(naming.backends) == set(naming.backend_heads) == {10, 12}
