"""ClusterIP / NodePort allocation through the registry, and the band arithmetic."""
from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from controlplane.api import Invalid, Service
from controlplane.controllers.allocators import ClusterIPAllocator, NodePortAllocator, RangeFull
from controlplane.controllers.bands import pick_free, static_band_size
from controlplane.controllers.config import ClusterConfig, ConfigError
from controlplane.controllers.registry import BatchError, Manifest, Registry
from controlplane.store import SqliteStore


def service_doc(name: str, **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def apply(registry: Registry, *docs: dict) -> list[Service]:
    return [o.obj for o in registry.apply([Manifest(d, "t.yaml") for d in docs])]


@pytest.fixture
def registry(any_store) -> Registry:
    return Registry(any_store)   # SQLite and etcd (tests/unit/conftest.py)


def test_band_sizes_match_kubernetes() -> None:
    size = 2**20 - 2                                   # a /12 without network and broadcast
    assert static_band_size(size, 16, 256) == 256      # 10.96.0.1 - 10.96.1.0
    assert static_band_size(2768, 32, 128) == 86       # 30000 - 30085
    assert static_band_size(14, 16, 256) == 16


def test_pick_free_prefers_the_upper_band() -> None:
    rng = random.Random(1)
    picks = {pick_free(100, 20, lambda o: False, rng) for _ in range(200)}
    assert min(picks) >= 20
    assert pick_free(100, 20, lambda o: o >= 20, rng) < 20       # upper band full -> lower band
    assert pick_free(100, 20, lambda o: True, rng) is None


def test_bootstrap_gives_kubernetes_the_first_address(registry: Registry) -> None:
    k = registry.store.get(Service, "default", "kubernetes")
    assert k.spec.cluster_ip == "10.96.0.1"
    assert k.ports[0].port == 443 and k.ports[0].target_port == 6443


def test_dynamic_addresses_come_from_the_upper_band_and_are_never_reused(registry: Registry) -> None:
    services = apply(registry, *[service_doc(f"s{i}") for i in range(50)])
    ips = [ipaddress.ip_address(s.spec.cluster_ip) for s in services]
    assert len(set(ips)) == 50
    assert all(ip > ipaddress.ip_address("10.96.1.0") for ip in ips)
    assert all(ip in ipaddress.ip_network("10.96.0.0/12") for ip in ips)
    assert services[0].spec.cluster_ips == [services[0].spec.cluster_ip]


def test_requested_address_conflict_and_range(registry: Registry) -> None:
    apply(registry, service_doc("a", clusterIP="10.96.0.50"))
    with pytest.raises(BatchError) as exc:
        apply(registry, service_doc("b", clusterIP="10.96.0.50"))
    err = exc.value.failures[0].error
    assert isinstance(err, Invalid)
    assert str(err.errors[0]) == 'spec.clusterIP: Invalid value: "10.96.0.50": provided IP is already allocated'
    with pytest.raises(BatchError) as exc:
        apply(registry, service_doc("c", clusterIP="192.168.0.1"))
    assert str(exc.value.failures[0].error.errors[0]) == (
        'spec.clusterIP: Invalid value: "192.168.0.1": provided IP is not in the valid range. '
        "The range of valid IPs is 10.96.0.0/12")


def test_delete_releases_address_and_node_port(registry: Registry) -> None:
    apply(registry, service_doc("a", type="NodePort", clusterIP="10.96.0.50", ports=[{"port": 80, "nodePort": 30080}]))
    registry.delete(Service, "default", "a")
    again = apply(registry, service_doc("b", type="NodePort", clusterIP="10.96.0.50",
                                        ports=[{"port": 80, "nodePort": 30080}]))[0]
    assert again.spec.cluster_ip == "10.96.0.50" and again.node_ports == [30080]


def test_node_port_errors(registry: Registry) -> None:
    apply(registry, service_doc("a", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    with pytest.raises(BatchError) as exc:
        apply(registry, service_doc("b", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert str(exc.value.failures[0].error.errors[0]) == (
        "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated")
    with pytest.raises(BatchError) as exc:
        apply(registry, service_doc("c", type="NodePort", ports=[{"port": 80, "nodePort": 40000}]))
    assert str(exc.value.failures[0].error.errors[0]) == (
        "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. "
        "The range of valid ports is 30000-32767")


def test_every_failing_document_is_reported_in_order_and_none_applied(registry: Registry) -> None:
    """One refused by an allocation (found when it is applied), one by validation (found
    before anything is): both are said, as kubectl says each, and nothing is written.
    Only the second was said: validation failures ended the batch before any allocation."""
    with pytest.raises(BatchError) as exc:
        apply(registry, service_doc("bad1", type="NodePort", ports=[{"port": 80, "nodePort": 80}]),
              service_doc("good"), service_doc("bad2", ports=[{"port": 99999}]))
    assert [f.name for f in exc.value.failures] == ["bad1", "bad2"]
    assert "provided port is not in the valid range" in str(exc.value.failures[0].error)
    assert not [s for s in registry.store.list(Service) if s.name in ("bad1", "good", "bad2")]


def test_creation_timestamp_and_uid_are_the_servers_not_the_clients(registry: Registry) -> None:
    """As kube-apiserver: a backdated Service would be the older of two that name one
    address, which the agent gives it (agent/desired.py claim_rank)."""
    doc = service_doc("backdated")
    doc["metadata"].update(creationTimestamp="2000-01-01T00:00:00Z", uid="0000")
    (svc,) = apply(registry, doc)
    assert svc.metadata.creation_timestamp and not svc.metadata.creation_timestamp.startswith("2000")
    assert svc.metadata.uid != "0000"


def test_tcp_and_udp_of_one_number_share_a_node_port(registry: Registry) -> None:
    svc = apply(registry, service_doc("dns", type="NodePort", ports=[
        {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "metrics", "port": 9153}]))[0]
    udp, tcp, metrics = svc.node_ports
    assert udp == tcp != metrics
    assert all(30086 <= p <= 32767 for p in svc.node_ports)   # dynamic band


def test_failed_batch_allocates_nothing(registry: Registry) -> None:
    with pytest.raises(BatchError):
        apply(registry, service_doc("a", type="NodePort", ports=[{"port": 80, "nodePort": 30090}]),
              service_doc("b", clusterIP="1.2.3.4"))
    assert registry.store.claims("servicenodeports") == {}
    assert registry.store.try_get(Service, "default", "a") is None


def test_type_changes_release_and_allocate(registry: Registry) -> None:
    nodeport = apply(registry, service_doc("a", type="NodePort"))[0]
    ip, port = nodeport.spec.cluster_ip, nodeport.node_ports[0]
    external = apply(registry, service_doc("a", type="ExternalName", externalName="db.example.com", ports=None))[0]
    assert external.spec.cluster_ip is None and external.node_ports == []
    assert ip not in registry.store.claims("serviceips")
    assert str(port) not in registry.store.claims("servicenodeports")
    back = apply(registry, service_doc("a"))[0]
    assert back.spec.cluster_ip and back.node_ports == []
    assert registry.store.claims("serviceips")[back.spec.cluster_ip] == "default/a"


def test_node_port_to_cluster_ip_drops_the_node_port(registry: Registry) -> None:
    svc = apply(registry, service_doc("a", type="NodePort"))[0]
    port = svc.node_ports[0]
    plain = apply(registry, service_doc("a", type="ClusterIP"))[0]
    assert plain.node_ports == [] and plain.spec.cluster_ip == svc.spec.cluster_ip
    assert str(port) not in registry.store.claims("servicenodeports")


def test_reapply_keeps_allocated_values(registry: Registry) -> None:
    first = apply(registry, service_doc("a", type="NodePort"))[0]
    outcome = registry.apply([Manifest(service_doc("a", type="NodePort"), "t.yaml")])[0]
    assert outcome.action == "unchanged"
    assert outcome.obj.node_ports == first.node_ports and outcome.obj.spec.cluster_ip == first.spec.cluster_ip


def test_small_range_exhaustion_and_dns_reservation(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "small.db")
    config = ClusterConfig(service_cidr="10.0.0.0/28", node_port_range="30000-30001")
    Registry(store, config)  # kubernetes takes 10.0.0.1
    with store.transaction() as tx:
        ips = ClusterIPAllocator(tx, config)
        got = {ips.allocate(f"o{i}") for i in range(12)}  # 14 usable - kubernetes - dns
        assert config.dns_ip == "10.0.0.10" and config.dns_ip not in got
        with pytest.raises(RangeFull):
            ips.allocate("one-too-many")
        ports = NodePortAllocator(tx, config)
        assert {ports.allocate("a"), ports.allocate("b")} == {30000, 30001}
        with pytest.raises(RangeFull):
            ports.allocate("c")


def test_config_is_validated_and_fixed_at_bootstrap(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 8 addresses"):
        ClusterConfig(service_cidr="10.0.0.0/30")
    store = SqliteStore(tmp_path / "c.db")
    Registry(store, ClusterConfig(service_cidr="10.100.0.0/16"))
    assert Registry(store).config.service_cidr == "10.100.0.0/16"
    with pytest.raises(ConfigError):
        Registry(store, ClusterConfig(service_cidr="10.200.0.0/16"))
