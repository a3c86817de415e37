"""The dataplane model's bulk paths (make_backends, ServiceState's order check, the
desired state built with them) check exactly what Backend() and ServiceState() check
one object at a time: a bad value among many good ones is still refused, naming it."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.agent.desired import NodeConfig, desired_state
from controlplane.api import Service
from controlplane.controllers.service_view import Backend as ViewBackend
from controlplane.controllers.service_view import ServicePortView, ServiceView
from controlplane.dataplane.model import (Backend, Frontend, ModelError, ServiceState, _all_valid_ipv4,
                                          _valid_ipv4, make_backends)

N = 1000
IPS = sorted(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(N))   # sorted by address, distinct
AT = 637                  # where the bad value goes
NAMED = re.escape(IPS[AT])
FE = Frontend("10.96.0.1", 80)


def columns(n: int = N):
    return list(IPS[:n]), [8080] * n, ["active"] * n, [1] * n


def one_bad(column: int, value, at: int = AT):
    cols = columns()
    cols[column][at] = value
    return cols


def test_good_columns_make_the_same_backends_as_the_constructor():
    ips, ports, states, weights = columns()
    states[5], weights[7], ports[9] = "terminating", 0, 65535
    made = make_backends(ips, ports, states, weights)
    assert made == tuple(Backend(*row) for row in zip(ips, ports, states, weights))
    assert all(type(b) is Backend for b in made)
    # a single state or weight stands for all
    assert make_backends(IPS, [80] * N, "terminating", 3) == tuple(Backend(ip, 80, "terminating", 3) for ip in IPS)
    assert make_backends((), (), (), ()) == ()


@pytest.mark.parametrize("bad", ["10.0.0.256", "10.0.0.01", "", "10.0.0", "10.0.0.1 ", " 10.0.0.1",
                                 "10.0.0.1\n10.0.0.2",     # would pass as two lines of the joined text
                                 "10.0.0.1\n", "١٠.0.0.1", None, 167772161, b"10.0.0.1"])
def test_a_bad_address_among_a_thousand_is_named(bad):
    with pytest.raises(ModelError, match=rf"^backend ip: {re.escape(repr(bad))}"
                                         r" is not an IPv4 address$"):
        make_backends(*one_bad(0, bad))


@pytest.mark.parametrize("bad", [0, 65536, -1, "8080", 8080.0, None])
def test_a_bad_port_among_a_thousand_is_named(bad):
    with pytest.raises(ModelError, match=rf"^backend {NAMED}: port {re.escape(repr(bad))} must be 1-65535$"):
        make_backends(*one_bad(1, bad))


@pytest.mark.parametrize("bad", ["draining", "", None, ["active"]])
def test_a_bad_state_among_a_thousand_is_named(bad):
    with pytest.raises((ModelError, TypeError)) as err:
        make_backends(*one_bad(2, bad))
    if not isinstance(bad, list):   # a list is unhashable: Backend() raises the TypeError too
        assert str(err.value) == f"backend {IPS[AT]}:8080: state {bad!r} unknown"


@pytest.mark.parametrize("bad", [-1, 65536, 1.5, "2", None])
def test_a_bad_weight_among_a_thousand_is_named(bad):
    with pytest.raises(ModelError, match=rf"^backend {NAMED}:8080: weight {re.escape(repr(bad))} must be 0-65535$"):
        make_backends(*one_bad(3, bad))


def test_a_bad_single_state_or_weight_is_refused():
    with pytest.raises(ModelError, match="state 'ready' unknown"):
        make_backends(IPS, [80] * N, "ready")
    with pytest.raises(ModelError, match="weight 70000 must be 0-65535"):
        make_backends(IPS, [80] * N, "active", 70000)


def test_columns_of_unequal_length_are_refused():
    with pytest.raises(ValueError, match="unequal length"):
        make_backends(IPS, [80] * (N - 1))


VALUES = {
    "ip": st.one_of(st.sampled_from(IPS[:20]), st.sampled_from(["10.0.0.256", "010.0.0.1", "1.2.3.4\n5.6.7.8", ""]),
                    st.integers(), st.none()),
    "port": st.one_of(st.integers(-2, 70000), st.booleans(), st.floats(0, 70000), st.text(max_size=3)),
    "state": st.one_of(st.sampled_from(["active", "terminating"]), st.text(max_size=12)),
    "weight": st.one_of(st.integers(-2, 70000), st.booleans(), st.floats(0, 70000), st.none()),
}


def _outcome(make):
    try:
        return "ok", make()
    except (ModelError, TypeError) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(VALUES["ip"], VALUES["port"], VALUES["state"], VALUES["weight"]), max_size=12))
def test_make_backends_agrees_with_the_constructor_on_any_rows(rows):
    """Same objects, or the same error about the same (first bad) backend."""
    cols = [list(c) for c in zip(*rows)] or [[], [], [], []]
    assert _outcome(lambda: make_backends(*cols)) == _outcome(lambda: tuple(Backend(*r) for r in rows))


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(IPS[:5]), st.text(alphabet="0123456789.\n x", max_size=16)),
                max_size=6))
def test_the_joined_address_check_agrees_with_the_one_by_one_check(ips):
    assert _all_valid_ipv4(ips) == all(_valid_ipv4(ip) for ip in ips), ips


def test_service_state_keeps_sorted_backends_and_sorts_others():
    backends = make_backends(*columns())
    assert ServiceState(FE, backends).backends == backends
    shuffled = backends[500:] + backends[:500]
    assert ServiceState(FE, shuffled).backends == backends
    assert ServiceState(FE, list(shuffled)).backends == backends     # any sequence, kept as a tuple
    # same address, another state: ordered by address, then refused as listed twice
    twice = backends[:300] + (Backend(IPS[AT], 8080, "terminating"),) + backends[300:]
    with pytest.raises(ModelError, match=rf"^service 10.96.0.1:80/TCP: backend {NAMED}:8080 listed twice$"):
        ServiceState(FE, twice)
    with pytest.raises(ModelError, match=rf"backend {re.escape(IPS[6])}:8080 listed twice"):
        ServiceState(FE, backends[:10] + backends[6:7])
    # in order but for one repeat next to itself (sorted, yet not distinct)
    with pytest.raises(ModelError, match=rf"backend {NAMED}:8080 listed twice"):
        ServiceState(FE, backends[:AT + 1] + (Backend(IPS[AT], 8080, "terminating", 2),) + backends[AT + 1:])


def test_service_state_checks_what_it_did_before():
    with pytest.raises(ModelError, match="algorithm 'fastest' unknown"):
        ServiceState(FE, (), "fastest")
    with pytest.raises(ModelError, match="affinity timeout 86401 must be 0-86400"):
        ServiceState(FE, (), "random", 86401)
    for bad, says in ((16380, "not prime"), (1, "out of range"), (16381.0, "must be an integer"),
                      (True, "must be an integer")):
        with pytest.raises(ModelError, match=says):
            ServiceState(FE, (), "maglev", maglev_table_size=bad)
    assert ServiceState(FE, (), "maglev").maglev_table_size == 16381
    assert ServiceState(FE, (), "random", maglev_table_size=251).maglev_table_size == 0
    with pytest.raises(ModelError, match="source range '10.0.0.0/33' is not an IPv4 CIDR"):
        ServiceState(FE, (), source_ranges=("10.0.0.0/33",))
    with pytest.raises(TypeError):
        ServiceState(FE, (), source_ranges=None)
    assert ServiceState(FE, (), source_ranges=["10.0.0.1/8", "10.0.0.0/8"]).source_ranges == ("10.0.0.0/8",)
    assert ServiceState(FE, (), source_ranges=[]).source_ranges == ()


def test_frontend_checks_what_it_did_before():
    class Text(str):
        pass
    assert Frontend(Text("10.96.0.1"), 80) == Frontend("10.96.0.1", 80)
    for vip in ("10.96.0.256", None, "10.96.0.1 "):
        with pytest.raises(ModelError, match=r"^frontend vip: .* is not an IPv4 address$"):
            Frontend(vip, 80)
    for port in (0, 65536, "80", 80.0):
        with pytest.raises(ModelError, match=rf"^frontend 10.96.0.1: port {port!r} must be 1-65535$"):
            Frontend("10.96.0.1", port)


def _view(backends) -> ServiceView:
    svc = Service.from_dict({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "web", "namespace": "default"},
                             "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}})
    port = ServicePortView("default", "web", "http", "TCP", 80, None, (("10.96.0.1", 80, "clusterIP"),),
                           tuple(backends))
    return ServiceView(svc, (port,))


def _endpoints(bad_ip=None):
    rows = [ViewBackend(ip, 8080, True, True, False, "node1", f"web-{i}") for i, ip in enumerate(IPS)]
    if bad_ip is not None:
        rows[AT] = rows[AT]._replace(ip=bad_ip)
    return rows


def test_desired_state_refuses_a_bad_endpoint_among_a_thousand():
    node = NodeConfig("node1")
    (state,) = desired_state([_view(_endpoints())], node).states
    assert [b.ip for b in state.backends] == IPS
    with pytest.raises(ModelError, match=r"^backend ip: '10.0.2.300' is not an IPv4 address$"):
        desired_state([_view(_endpoints("10.0.2.300"))], node)
    # not ready and not draining endpoints are left out before anything is checked
    rows = _endpoints()
    rows[AT] = rows[AT]._replace(ip="10.0.2.300", ready=False, serving=False)
    rows[5] = rows[5]._replace(ready=False, terminating=True)
    (state,) = desired_state([_view(rows)], node).states
    assert len(state.backends) == N - 1 and state.backends[5].state == "terminating"


def test_a_service_state_takes_backends_only():
    with pytest.raises(AttributeError):
        ServiceState(FE, (("10.0.0.1", 80, "active", 1),))
