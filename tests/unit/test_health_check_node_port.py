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
