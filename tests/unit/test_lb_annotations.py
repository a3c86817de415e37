"""Backend-selection annotations: apply-time validation and the agent's reading."""
from __future__ import annotations

import pytest

from controlplane.agent.desired import NodeConfig, desired_state
from controlplane.api import EndpointSlice, Service
from controlplane.api.defaults import apply_defaults
from controlplane.api.validation import validate
from controlplane.api.validation.lb_annotations import parse_backend_weights
from controlplane.controllers.service_view import build_service_view
from controlplane.dataplane.layout import ALGORITHMS

READY = {"ready": True, "serving": True, "terminating": False}


def service(annotations) -> Service:
    return Service.from_dict({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "annotations": annotations},
        "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})


def slice_(*eps) -> EndpointSlice:
    return EndpointSlice.from_dict({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-a", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": READY, "targetRef": {"kind": "Pod", "name": pod}}
                      for ip, pod in eps]})


def errors(annotations) -> list[str]:
    svc = service(annotations)
    apply_defaults(svc)
    return [str(e) for e in validate(svc)]


def test_every_datapath_algorithm_is_accepted():
    assert set(ALGORITHMS) == {"random", "rr", "maglev", "wrr", "sh", "dh", "lc", "wlc", "sed", "nq"}
    for alg in ALGORITHMS:
        assert errors({"svcxdp.io/lb-algorithm": alg}) == []


def test_unknown_algorithm_is_rejected_kubectl_style():
    assert errors({"svcxdp.io/lb-algorithm": "foo"}) == [
        'metadata.annotations[svcxdp.io/lb-algorithm]: Unsupported value: "foo": supported values: '
        '"dh", "lc", "maglev", "nq", "random", "rr", "sed", "sh", "wlc", "wrr"']


@pytest.mark.parametrize("bad", ["web-0", "web-0=x", "web-0=-1", "web-0=70000", "Bad_Name=1", "a=1,a=2"])
def test_bad_weights_are_rejected(bad):
    (err,) = errors({"svcxdp.io/backend-weights": bad})
    assert err.startswith(f'metadata.annotations[svcxdp.io/backend-weights]: Invalid value: "{bad}"')


def test_weights_parse():
    assert parse_backend_weights(" web-0=3, 10.244.1.5=0 ,") == {"web-0": 3, "10.244.1.5": 0}


@pytest.mark.parametrize("bad", ["16000", "x", "1"])
def test_bad_maglev_table_size_is_rejected(bad):
    (err,) = errors({"svcxdp.io/lb-algorithm": "maglev", "svcxdp.io/maglev-table-size": bad})
    assert "svcxdp.io/maglev-table-size" in err


def test_agent_applies_weights_by_pod_name_or_ip_and_table_size():
    svc = service({"svcxdp.io/lb-algorithm": "maglev", "svcxdp.io/backend-weights": "web-0=3,10.244.1.3=0",
                   "svcxdp.io/maglev-table-size": "65537"})
    d = desired_state([build_service_view(svc, [slice_(("10.244.1.2", "web-0"), ("10.244.1.3", "web-1"),
                                                        ("10.244.1.4", "web-2"))])], NodeConfig("n1"))
    (s,) = d.states
    assert [(b.ip, b.weight) for b in s.backends] == [("10.244.1.2", 3), ("10.244.1.3", 0), ("10.244.1.4", 1)]
    assert s.algorithm == "maglev" and s.maglev_table_size == 65537
    assert d.problems == ()


def test_agent_reports_small_maglev_table():
    svc = service({"svcxdp.io/lb-algorithm": "maglev", "svcxdp.io/maglev-table-size": "251"})
    eps = [(f"10.244.1.{i}", f"web-{i}") for i in range(2, 6)]
    d = desired_state([build_service_view(svc, [slice_(*eps)])], NodeConfig("n1"))
    assert any("Maglev table size 251" in p for p in d.problems)
