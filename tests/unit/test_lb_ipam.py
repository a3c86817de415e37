"""LB-IPAM with the real SQLite store, registry and controller manager: LoadBalancer services
get ingress IPs from the pool, pending when it is exhausted, released on delete and type change,
never twice the same address, even with controllers racing in separate processes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.api import Service
from controlplane.controllers import Manifest, Registry, reconcile
from controlplane.controllers.lb_ipam import CONDITION_TYPE, POOL_LB_IPS, LBIPAM, reconcile_lb_ipam
from controlplane.controllers.lb_pool import Pool, PoolError, pool_from_document, save_pool
from controlplane.store.paths import open_store
from tests.unit.conftest import STORES, make_store


def lb(name: str, **spec) -> dict:
    spec.setdefault("type", "LoadBalancer")
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


class Cluster:
    def __init__(self, store, pool: str | None = "192.168.1.240/30") -> None:
        self.store = store
        self.registry = Registry(self.store)
        if pool is not None:
            with self.store.transaction() as tx:
                save_pool(tx, Pool.parse(pool.split(",")))

    def apply(self, *docs: dict) -> None:
        self.registry.apply([Manifest(d, "t.yaml") for d in docs])
        reconcile(self.store)

    def delete(self, name: str) -> None:
        self.registry.delete(Service, "default", name)
        reconcile(self.store)

    def svc(self, name: str) -> Service:
        return self.store.get(Service, "default", name)

    def ip(self, name: str) -> str | None:
        ips = self.svc(name).load_balancer_ips
        assert len(ips) <= 1
        return ips[0] if ips else None

    def condition(self, name: str) -> tuple[str | None, str | None]:
        for c in self.svc(name).status.conditions or []:
            if c.type == CONDITION_TYPE:
                return c.status, c.reason
        return None, None


@pytest.fixture
def cluster(any_store) -> Cluster:
    """Both stores: SQLite (a transaction holds the write lock) and etcd (optimistic commits)."""
    return Cluster(any_store)


def test_pool_blocks_skip_network_and_broadcast_and_parse_cilium_pools() -> None:
    assert list(Pool.parse(["192.168.1.240/30"]).addresses()) == ["192.168.1.241", "192.168.1.242"]
    assert list(Pool.parse(["10.0.0.7/32", "10.0.0.9-10.0.0.10"]).addresses()) == ["10.0.0.7", "10.0.0.9", "10.0.0.10"]
    assert Pool.parse(["192.168.1.240/28"]).size == 14
    doc = {"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumLoadBalancerIPPool",
           "spec": {"blocks": [{"cidr": "192.168.1.240/28"}, {"start": "10.1.0.1", "stop": "10.1.0.2"}]}}
    assert pool_from_document(doc).entries == ["192.168.1.240/28", "10.1.0.1-10.1.0.2"]
    for bad in (["192.168.1.241/28"], ["10.0.0.5-10.0.0.1"], ["10.0.0.0/24", "10.0.0.128/25"], ["2001:db8::/64"]):
        with pytest.raises(PoolError):
            Pool.parse(bad)


def test_load_balancer_gets_the_lowest_free_address_with_status_written(cluster: Cluster) -> None:
    cluster.apply(lb("a"), lb("b"))
    assert (cluster.ip("a"), cluster.ip("b")) == ("192.168.1.241", "192.168.1.242")
    ingress = cluster.svc("a").status.load_balancer.ingress  # type: ignore[union-attr]
    assert ingress[0].ip_mode == "VIP"
    assert cluster.condition("a") == ("True", "Allocated")
    assert cluster.store.claims(POOL_LB_IPS) == {"192.168.1.241": "default/a", "192.168.1.242": "default/b"}
    cluster.apply(lb("a"))                                 # re-apply: keeps its address, writes nothing new
    assert cluster.ip("a") == "192.168.1.241"


def test_exhausted_pool_leaves_pending_until_an_address_frees(cluster: Cluster) -> None:
    cluster.apply(lb("a"), lb("b"), lb("c"))
    assert cluster.ip("c") is None
    assert cluster.condition("c") == ("False", "PoolExhausted")
    cluster.delete("a")
    assert cluster.ip("c") == "192.168.1.241"
    assert cluster.condition("c") == ("True", "Allocated")
    assert cluster.store.claims(POOL_LB_IPS) == {"192.168.1.241": "default/c", "192.168.1.242": "default/b"}


def test_requested_load_balancer_ip(cluster: Cluster) -> None:
    cluster.apply(lb("a", loadBalancerIP="192.168.1.242"))
    assert cluster.ip("a") == "192.168.1.242"
    cluster.apply(lb("b", loadBalancerIP="192.168.1.242"), lb("c", loadBalancerIP="10.9.9.9"))
    assert (cluster.ip("b"), cluster.condition("b")) == (None, ("False", "AlreadyAllocated"))
    assert (cluster.ip("c"), cluster.condition("c")) == (None, ("False", "OutOfPool"))
    cluster.delete("a")                                    # the requested address frees: b gets it
    assert cluster.ip("b") == "192.168.1.242"
    cluster.apply(lb("b", loadBalancerIP="192.168.1.241"))  # a changed request moves the service
    assert cluster.ip("b") == "192.168.1.241"
    assert cluster.store.claims(POOL_LB_IPS) == {"192.168.1.241": "default/b"}


def test_type_change_releases_and_clears_status(cluster: Cluster) -> None:
    cluster.apply(lb("a"))
    cluster.apply(lb("a", type="NodePort"))
    svc = cluster.svc("a")
    assert svc.status.load_balancer is None and not svc.status.conditions
    assert cluster.store.claims(POOL_LB_IPS) == {}
    cluster.apply(lb("a"))
    assert cluster.ip("a") == "192.168.1.241"
    cluster.apply(lb("a", type="ClusterIP"))
    assert cluster.ip("a") is None and cluster.store.claims(POOL_LB_IPS) == {}


def test_another_load_balancer_class_is_left_alone(cluster: Cluster) -> None:
    cluster.apply(lb("other", loadBalancerClass="example.com/metal"))
    assert cluster.ip("other") is None and cluster.condition("other") == (None, None)
    # its own controller writes its status; ours neither takes the address nor clears it
    svc = cluster.svc("other")
    doc = svc.to_dict()
    doc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.168.1.241"}]}}
    cluster.store.update(Service.from_dict(doc))
    reconcile(cluster.store)
    reconcile_lb_ipam(cluster.store)
    assert cluster.ip("other") == "192.168.1.241"
    assert cluster.store.claims(POOL_LB_IPS) == {}
    cluster.apply(lb("ours"))
    assert cluster.ip("ours") == "192.168.1.241"       # the pool is ours: the address is free for us


def test_no_node_ports_when_not_allocated(cluster: Cluster) -> None:
    cluster.apply(lb("a", allocateLoadBalancerNodePorts=False))
    svc = cluster.svc("a")
    assert svc.ports[0].node_port is None and cluster.ip("a") == "192.168.1.241"


def test_status_in_a_manifest_is_ignored(cluster: Cluster) -> None:
    doc = lb("a", loadBalancerIP=None)
    doc["spec"].pop("loadBalancerIP")
    doc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.168.1.242"}]}}
    cluster.apply(doc)
    assert cluster.ip("a") == "192.168.1.241"      # a client does not write status


def test_pool_change_moves_services_out_of_removed_addresses(cluster: Cluster) -> None:
    cluster.apply(lb("a"), lb("b"))
    with cluster.store.transaction() as tx:
        save_pool(tx, Pool.parse(["192.168.1.242/32", "10.0.0.1/32"]))
    reconcile_lb_ipam(cluster.store)
    assert {cluster.ip("a"), cluster.ip("b")} == {"192.168.1.242", "10.0.0.1"}
    with cluster.store.transaction() as tx:
        save_pool(tx, Pool())
    reconcile_lb_ipam(cluster.store)
    assert (cluster.ip("a"), cluster.condition("a")) == (None, ("False", "NoPool"))


def test_a_failed_transaction_claims_nothing(cluster: Cluster) -> None:
    cluster.registry.apply([Manifest(lb("a"), "t.yaml")])      # created, not yet reconciled
    with pytest.raises(RuntimeError):
        with cluster.store.transaction() as tx:
            assert LBIPAM(tx).sync("default", "a") == 1
            raise RuntimeError("the controller crashed before commit")
    assert cluster.store.claims(POOL_LB_IPS) == {} and cluster.ip("a") is None


RACER = """
import sys
from controlplane.controllers import Manifest, Registry, reconcile
from controlplane.store.paths import open_store
kind, where, names = sys.argv[1], sys.argv[2], sys.argv[3:]
store = open_store(where, None) if kind == "sqlite" else open_store(None, where)
registry = Registry(store)
for name in names:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    registry.apply([Manifest(doc, "race.yaml")])
    reconcile(store)
"""


@pytest.mark.parametrize("kind", STORES)
def test_racing_controllers_never_share_an_address(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two processes, each with its own store connection, creating LoadBalancers one by one
    and running the controllers after each; 6 addresses for 10 services."""
    store = make_store(kind, tmp_path, request)
    where = str(tmp_path) if kind == "sqlite" else request.getfixturevalue("etcd_server").url
    if kind == "sqlite":
        store.close()
        store = open_store(where, None)
    Cluster(store, pool="192.168.1.240/29")
    procs = [subprocess.Popen([sys.executable, "-c", RACER, kind, where, *[f"p{p}-{i}" for i in range(5)]],
                              stderr=subprocess.PIPE, text=True) for p in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    reconcile(store)
    services = [s for s in store.list(Service, "default") if s.type == "LoadBalancer"]
    ips = [ip for s in services for ip in s.load_balancer_ips]
    assert len(services) == 10 and len(ips) == 6 and len(set(ips)) == 6
    assert store.claims(POOL_LB_IPS) == {ip: s.key for s in services for ip in s.load_balancer_ips}
    store.close()
