"""healthCheckNodePort: allocated by the API for LoadBalancer + externalTrafficPolicy Local, as
the apiserver does; a user's value is honoured and checked; changes release it. Real SQLite
store, through the registry."""
from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.api import Service
from controlplane.controllers.allocators import POOL_NODE_PORTS
from controlplane.controllers.registry import BatchError, Manifest, Registry
from controlplane.store import SqliteStore


def lb(name: str = "web", **spec) -> dict:
    spec.setdefault("type", "LoadBalancer")
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(SqliteStore(tmp_path / "s.db"))


def apply(registry: Registry, doc: dict) -> Service:
    return registry.apply([Manifest(doc, "t.yaml")])[0].obj  # type: ignore[return-value]


def claims_of(registry: Registry, name: str) -> set[int]:
    return {int(v) for v, owner in registry.store.claims(POOL_NODE_PORTS).items() if owner == f"default/{name}"}


def messages(exc: pytest.ExceptionInfo[BatchError]) -> str:
    return str(exc.value)


def test_local_load_balancer_gets_a_health_check_node_port(registry: Registry) -> None:
    svc = apply(registry, lb(externalTrafficPolicy="Local"))
    hc = svc.spec.health_check_node_port
    assert hc and 30000 <= hc <= 32767 and hc != svc.ports[0].node_port
    assert claims_of(registry, "web") == {hc, svc.ports[0].node_port}
    # Cluster policy, or a NodePort service, gets none
    assert apply(registry, lb("c")).spec.health_check_node_port is None
    assert apply(registry, lb("n", type="NodePort", externalTrafficPolicy="Local")).spec.health_check_node_port is None


def test_a_user_value_is_honoured_kept_on_reapply_and_conflicts_are_refused(registry: Registry) -> None:
    svc = apply(registry, lb(externalTrafficPolicy="Local", healthCheckNodePort=30999))
    assert svc.spec.health_check_node_port == 30999
    assert apply(registry, lb(externalTrafficPolicy="Local")).spec.health_check_node_port == 30999
    with pytest.raises(BatchError) as exc:
        apply(registry, lb("other", externalTrafficPolicy="Local", healthCheckNodePort=30999))
    # the apiserver's words: an internal error, not a field error
    assert messages(exc) == ("Internal error occurred: failed to allocate requested HealthCheck NodePort 30999: "
                             "provided port is already allocated")
    with pytest.raises(BatchError) as exc:
        apply(registry, lb("other", externalTrafficPolicy="Local", healthCheckNodePort=8080))
    assert messages(exc) == ("Internal error occurred: failed to allocate requested HealthCheck NodePort 8080: "
                             "provided port is not in the valid range. The range of valid ports is 30000-32767")
    assert claims_of(registry, "other") == set()          # nothing half-applied


def test_changing_it_while_local_is_refused(registry: Registry) -> None:
    apply(registry, lb(externalTrafficPolicy="Local", healthCheckNodePort=30999))
    with pytest.raises(BatchError) as exc:
        apply(registry, lb(externalTrafficPolicy="Local", healthCheckNodePort=31000))
    assert "spec.healthCheckNodePort: Forbidden: field is immutable" in messages(exc)


def test_policy_or_type_change_releases_it(registry: Registry) -> None:
    svc = apply(registry, lb(externalTrafficPolicy="Local"))
    hc = svc.spec.health_check_node_port
    svc = apply(registry, lb(externalTrafficPolicy="Cluster"))
    assert svc.spec.health_check_node_port is None
    assert hc not in claims_of(registry, "web")
    svc = apply(registry, lb(externalTrafficPolicy="Local"))
    assert svc.spec.health_check_node_port
    svc = apply(registry, lb(type="NodePort", externalTrafficPolicy="Local"))
    assert svc.spec.health_check_node_port is None
    assert claims_of(registry, "web") == {svc.ports[0].node_port}
    registry.delete(Service, "default", "web")
    assert claims_of(registry, "web") == set()


def test_no_node_ports_when_allocation_is_off_but_still_a_health_check_port(registry: Registry) -> None:
    svc = apply(registry, lb(externalTrafficPolicy="Local", allocateLoadBalancerNodePorts=False))
    assert svc.ports[0].node_port is None
    assert claims_of(registry, "web") == {svc.spec.health_check_node_port}


def test_node_ports_asked_for_are_claimed_when_allocation_is_off(registry: Registry) -> None:
    """allocateLoadBalancerNodePorts: false stops only the automatic nodePorts: one the user
    asks for is range-checked and claimed (else two services would hold one nodePort, and
    the dataplane serve it for only one of them)."""
    ports = [{"name": "a", "port": 80, "nodePort": 30654}, {"name": "b", "port": 81}]
    svc = apply(registry, lb(allocateLoadBalancerNodePorts=False, ports=ports))
    assert [p.node_port for p in svc.ports] == [30654, None]
    assert claims_of(registry, "web") == {30654}
    with pytest.raises(BatchError) as exc:
        apply(registry, lb("np", type="NodePort", ports=[{"port": 80, "nodePort": 30654}]))
    assert "spec.ports[0].nodePort: Invalid value: 30654: provided port is already allocated" in messages(exc)
    with pytest.raises(BatchError) as exc:
        apply(registry, lb("low", allocateLoadBalancerNodePorts=False, ports=[{"port": 80, "nodePort": 20}]))
    assert "spec.ports[0].nodePort: Invalid value: 20: provided port is not in the valid range" in messages(exc)


def test_turning_allocation_off_keeps_the_node_ports_held(registry: Registry) -> None:
    """The API's documented behaviour: node ports allocated before are not de-allocated."""
    held = apply(registry, lb()).ports[0].node_port
    svc = apply(registry, lb(allocateLoadBalancerNodePorts=False))
    assert svc.ports[0].node_port == held
    assert claims_of(registry, "web") == {held}
    with pytest.raises(BatchError):
        apply(registry, lb("np", type="NodePort", ports=[{"port": 80, "nodePort": held}]))


def test_a_health_check_port_cannot_be_one_of_the_services_own_node_ports(registry: Registry) -> None:
    with pytest.raises(BatchError) as exc:
        apply(registry, lb(externalTrafficPolicy="Local", healthCheckNodePort=31005,
                           ports=[{"port": 80, "nodePort": 31005}]))
    assert messages(exc) == ("Internal error occurred: failed to allocate requested HealthCheck NodePort 31005: "
                             "provided port is already allocated")
    assert claims_of(registry, "web") == set()


def test_a_service_stored_with_both_on_one_port_can_still_be_updated(registry: Registry) -> None:
    """Stored before the check existed: an update that keeps it is not refused."""
    svc = apply(registry, lb(externalTrafficPolicy="Local"))
    stored = registry.store.get(Service, "default", "web")
    stored.spec.health_check_node_port = svc.ports[0].node_port
    registry.store.update(stored)
    doc = lb(externalTrafficPolicy="Local", healthCheckNodePort=svc.ports[0].node_port)
    doc["metadata"]["labels"] = {"team": "a"}
    assert apply(registry, doc).metadata.labels == {"team": "a"}
