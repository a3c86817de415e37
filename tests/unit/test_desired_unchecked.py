"""The desired state's quick pass (UncheckedModel: objects made unchecked, checked in
batches) against its checked pass (the constructors, one object at a time): for any
views, the same Desired or the same error; and the quick pass is taken for good input."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.agent.desired import NodeConfig, _Checked, _desired_state, desired_each, desired_state
from controlplane.api import Service
from controlplane.controllers.service_view import Backend as ViewBackend
from controlplane.controllers.service_view import Hints
from controlplane.controllers.service_view import ServicePortView, ServiceView
from controlplane.dataplane import model
from controlplane.dataplane.model import ModelError, UncheckedModel, _all_valid_ipv4_joined, _valid_ipv4

GOOD_IPS = [f"10.{a}.{b}.{c}" for a in (0, 244) for b in (1, 2) for c in (1, 2, 9, 10, 255)]
BAD_IPS = ["10.0.0.256", "010.0.0.1", "", "1.2.3.4\n5.6.7.8", "1.2.3.4 ", None, 5]
GOOD_PORTS = [1, 80, 443, 8080, 65535]
BAD_PORTS = [0, 65536, -1, "80", 80.0, True, None]
ANNOTATIONS = [{}, {"svcxdp.io/lb-algorithm": "maglev"}, {"svcxdp.io/lb-algorithm": "wrr"},
               {"svcxdp.io/lb-algorithm": "bogus"},
               {"svcxdp.io/lb-algorithm": "maglev", "svcxdp.io/maglev-table-size": "251"},
               {"svcxdp.io/backend-weights": "p0=3,10.0.1.2=0,p2=7"}, {"svcxdp.io/backend-weights": "p0=x"},
               {"service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8, 192.168.1.1/24"},
               {"service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/33"}]
NODES = [NodeConfig("node1"), NodeConfig("node2", "maglev", ("192.168.0.1", "192.168.0.2"), "zone-a"),
         NodeConfig("node1", zone="zone-b"),
         NodeConfig("node1", "wrr", ("192.168.0.1",)), NodeConfig("node1", "bogus"),
         NodeConfig("node1", "random", ("300.1.1.1",))]


def _value(good, bad):
    """Mostly good values, now and then a bad one."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good),
                     st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


# topology hints on some rows (they apply to the ports whose ready rows all have them)
HINTS = st.one_of(st.none(), st.none(), st.builds(
    Hints, st.frozensets(st.sampled_from(["zone-a", "zone-b"]), max_size=2),
    st.frozensets(st.sampled_from(["node1", "node2"]), max_size=2)))
ROW = st.builds(ViewBackend, _value(GOOD_IPS, BAD_IPS), _value(GOOD_PORTS, BAD_PORTS), st.booleans(),
                st.booleans(), st.booleans(), st.sampled_from(["node1", "node2", None]),
                st.sampled_from(["p0", "p2", None, ""]), HINTS)


@st.composite
def rows(draw):
    """A port's endpoints: as the read model gives them (sorted, one per address) or not."""
    out = draw(st.lists(ROW, max_size=12))
    if draw(st.booleans()):
        seen = set()
        try:
            out.sort()
        except TypeError:
            pass
        out = [r for r in out if (r.ip, r.port) not in seen and not seen.add((r.ip, r.port))]
    return tuple(out)


@st.composite
def view(draw, i: int):
    spec = {"clusterIP": draw(st.sampled_from([f"10.96.0.{i + 1}", "10.96.0.1", "None", ""])),
            "ports": [{"name": "p", "port": 80}],
            "type": draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"])),
            "externalTrafficPolicy": draw(st.sampled_from(["Cluster", "Local"])),
            "internalTrafficPolicy": draw(st.sampled_from(["Cluster", "Local"]))}
    if draw(st.booleans()):
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.sampled_from([1, 86400, 86401]))}}
    svc = Service.from_dict({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": f"s{i}", "namespace": "default",
                                          "annotations": draw(st.sampled_from(ANNOTATIONS))},
                             "spec": spec})
    ports = []
    for k in range(draw(st.integers(1, 3))):
        frontends = [(svc.spec.cluster_ip, 80 + k, "clusterIP")] if svc.spec.cluster_ip not in ("", "None") else []
        frontends += draw(st.lists(st.tuples(_value(["1.1.1.1", "2.2.2.2"], BAD_IPS), _value(GOOD_PORTS, BAD_PORTS),
                                             st.sampled_from(["externalIP", "loadBalancer"])), max_size=2))
        ports.append(ServicePortView("default", svc.name, draw(st.sampled_from(["", f"n{k}"])),
                                     draw(st.sampled_from(["TCP", "TCP", "UDP", "SCTP"])), 80 + k,
                                     draw(st.sampled_from([None, 30000 + k, 0])), tuple(frontends), draw(rows())))
    return ServiceView(svc, tuple(ports))


def _made(views, node, make):
    """_desired_state of one group of views (as desired_state makes it), None if refused."""
    made = _desired_state([views], node, make)
    return None if made is None else made[0]


def _columns_agree(state) -> bool:
    """A state's _columns (kept by UncheckedModel for the writer), if any, are its backends'."""
    if state._columns is None:
        return True
    ips, ports, states, weights = state._columns
    n = len(state.backends)
    return (list(ips) == [b.ip for b in state.backends] and list(ports) == [b.port for b in state.backends]
            and list(states if not isinstance(states, str) else [states] * n) == [b.state for b in state.backends]
            and list(weights if not isinstance(weights, int) else [weights] * n)
            == [b.weight for b in state.backends])


def _outcome(make):
    try:
        d = make()
    except (ModelError, TypeError, ValueError, AttributeError) as exc:
        return type(exc).__name__, str(exc)
    assert all(map(_columns_agree, d.states))
    return (d.states, list(d.owners.items()), [(str(p), p.reason) for p in d.problems],
            [tuple((k, v) for k, v in vars(s).items() if k != "_columns") for s in d.states],
            [type(b) for s in d.states for b in s.backends])


@pytest.fixture(params=[2048, 3])
def batch(request, monkeypatch):
    """UncheckedModel's batch size as shipped, and small enough that each views' backends
    come in many batches (a bad one among good ones, order kept across them)."""
    monkeypatch.setattr(UncheckedModel, "BATCH", request.param)
    return request.param


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_quick_and_checked_passes_agree(data, batch):
    views = [data.draw(view(i)) for i in range(data.draw(st.integers(1, 8)))]
    node = data.draw(st.sampled_from(NODES))
    assert _outcome(lambda: desired_state(views, node)) == _outcome(lambda: _made(views, node, _Checked()))


def _good_views(n: int) -> list[ServiceView]:
    out = []
    for i in range(n):
        svc = Service.from_dict({"apiVersion": "v1", "kind": "Service",
                                 "metadata": {"name": f"s{i}", "namespace": "default"},
                                 "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                                          "ports": [{"name": "http", "port": 80}]}})
        eps = tuple(sorted(ViewBackend(f"10.{1 + i // 250}.{i % 250}.{j + 1}", 8080, j != 3, True, j == 3,
                                "node1", f"p{j}") for j in range(10)))   # sorted, as read
        out.append(ServiceView(svc, (ServicePortView("default", svc.name, "http", "TCP", 80, None,
                                                     ((svc.spec.cluster_ip, 80, "clusterIP"),), eps),)))
    return out


def test_good_views_take_the_quick_pass(batch):
    """The quick pass is not given up on good input (it would still be right, and slow)."""
    views, node = _good_views(500), NodeConfig("node1")
    quick = _made(views, node, UncheckedModel())
    assert quick is not None
    assert _outcome(lambda: quick) == _outcome(lambda: _made(views, node, _Checked()))


@pytest.mark.parametrize("where", [0, 250, 499])
@pytest.mark.parametrize("field, bad, says", [    # bad values that keep the endpoints in order
    ("ip", "{ip}.1", r"^backend ip: '{ip}\.1' is not an IPv4 address$"),
    ("ip", "{ip} ", r"^backend ip: '{ip} ' is not an IPv4 address$"),
    ("ip", "{ip}\n10.0.0.2", r"^backend ip: '{ip}\\n10\.0\.0\.2' is not an IPv4 address$"),
    ("port", 0, r"^backend {ip}: port 0 must be 1-65535$"),
    ("port", "8080", r"^backend {ip}: port '8080' must be 1-65535$")])
def test_a_bad_endpoint_among_many_is_named(batch, where, field, bad, says):
    views = _good_views(500)
    port = views[where].ports[0]
    eps = list(port.backends)
    ip = eps[5].ip
    says = says.format(ip=re.escape(ip))
    eps[5] = eps[5]._replace(**{field: bad.format(ip=ip) if isinstance(bad, str) and field == "ip" else bad})
    views[where] = ServiceView(views[where].service, (ServicePortView(
        port.namespace, port.service, port.name, port.protocol, port.port, None, port.frontends, tuple(eps)),))
    assert _made(views, NodeConfig("node1"), UncheckedModel()) is None
    with pytest.raises(ModelError, match=says):
        desired_state(views, NodeConfig("node1"))


def test_a_bad_frontend_among_many_is_named(batch):
    views = _good_views(500)
    port = views[321].ports[0]
    views[321] = ServiceView(views[321].service, (ServicePortView(
        port.namespace, port.service, port.name, port.protocol, port.port, None,
        (("10.96.1.72 ", 80, "clusterIP"),), port.backends),))
    assert _made(views, NodeConfig("node1"), UncheckedModel()) is None
    with pytest.raises(ModelError, match=r"^frontend vip: '10.96.1.72 ' is not an IPv4 address$"):
        desired_state(views, NodeConfig("node1"))


def test_backends_out_of_order_are_sorted_as_before(batch):
    """Unsorted endpoints are not the quick pass's to sort: the checked pass does."""
    views = _good_views(50)
    port = views[20].ports[0]
    views[20] = ServiceView(views[20].service, (ServicePortView(
        port.namespace, port.service, port.name, port.protocol, port.port, None, port.frontends,
        port.backends[5:] + port.backends[:5]),))
    node = NodeConfig("node1")
    assert _made(views, node, UncheckedModel()) is None
    got = desired_state(views, node).states[20].backends
    assert [b.ip for b in got] == sorted(b.ip for b in port.backends if b.ready or b.terminating)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(GOOD_IPS[:5]), st.text(alphabet="0123456789.\n x", max_size=16),
                          st.text(max_size=8)), max_size=6))
def test_the_bulk_address_checks_agree_with_the_one_by_one_check(ips):
    want = all(_valid_ipv4(ip) for ip in ips)
    assert model._all_valid_ipv4(ips) == want, ips
    assert _all_valid_ipv4_joined(ips) == want, ips
    assert model._all_valid_ipv4_pton(ips) == want or not model._PTON_IS_STRICT, ips


def test_inet_pton_is_used_only_where_it_is_strict():
    assert model._all_valid_ipv4 is (model._all_valid_ipv4_pton if model._PTON_IS_STRICT
                                     else _all_valid_ipv4_joined)
    for probe in model._PTON_PROBES:
        assert not _valid_ipv4(probe), probe
    assert not model._all_valid_ipv4(["1.2.3.4\x00"]) and not model._all_valid_ipv4(["\ud800"])
    assert not model._all_valid_ipv4([b"1.2.3.4"]) and not model._all_valid_ipv4([None])


def test_rising_leaves_out_the_joins_between_runs():
    ips = ["10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.1", "10.0.0.1"]
    ports = [80, 80, 80, 81, 82]
    assert model._rising(ips, ports, [2, 3])
    assert model._rising(ips, ports, [2, 0, 3, 0])
    assert not model._rising(ips, ports, [5])
    assert not model._rising(ips, [80, 80, 80, 81, 81], [2, 3])    # a pair twice
    assert model._rising([], [], []) and model._rising(["10.0.0.1"], [80], [1])


def test_a_ports_frontends_are_all_made_before_its_states():
    """Which error a port with two bad values raises: its frontends are all made (and a
    bad address refused) before any of its states (and a bad source range refused)."""
    svc = Service.from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "default"},
                             "spec": {"clusterIP": "10.96.0.9", "type": "LoadBalancer",
                                      "loadBalancerSourceRanges": ["10.0.0.0/33"],
                                      "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}})
    port = ServicePortView("default", "lb", "http", "TCP", 80, 30080,
                           (("10.96.0.9", 80, "clusterIP"), ("192.168.1.240", 80, "loadBalancer")), ())
    views = [ServiceView(svc, (port,))]
    with pytest.raises(ModelError, match=r"^frontend vip: '300\.1\.1\.1' is not an IPv4 address$"):
        desired_state(views, NodeConfig("node1", nodeport_addresses=("300.1.1.1",)))
    with pytest.raises(ModelError, match=r"source range '10\.0\.0\.0/33' is not an IPv4 CIDR$"):
        desired_state(views, NodeConfig("node1", nodeport_addresses=("192.168.1.31",)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_each_view_apart_in_one_pass(data, batch):
    """desired_each == desired_state of each view alone: the same states, owners and
    problems per view, None for a view that is not there, and a frontend two views claim
    is no conflict between them (the agent keeps services apart). A view the model
    refuses alone (ModelError) is, in desired_each, a service not served, its Problem
    saying why, the others as alone — unless two or more views and every one of them are
    refused, or one fails otherwise (a fault, not a value): then desired_each raises."""
    views = [data.draw(view(i)) for i in range(data.draw(st.integers(1, 6)))]
    views = views + views[:1]            # one view twice: its frontends claimed twice
    node = data.draw(st.sampled_from(NODES))
    views.insert(data.draw(st.integers(0, len(views))), None)
    alone = [_outcome(lambda v=v: desired_state([v] if v is not None else [], node)) for v in views]
    refused = [want for want in alone if isinstance(want[0], str)]
    present = sum(v is not None for v in views)
    if any(name != "ModelError" for name, _ in refused) or (len(refused) >= 2 and len(refused) == present):
        with pytest.raises((ModelError, TypeError, ValueError, AttributeError)):
            desired_each(views, node)
        return
    each = desired_each(views, node)
    for got, want in zip(each, alone):
        if isinstance(want[0], str):      # refused alone: (exception name, message)
            assert got.states == () and [p.reason for p in got.problems] == ["NotServed"]
            assert want[1] in got.problems[0]
        else:
            assert _outcome(lambda d=got: d) == want
