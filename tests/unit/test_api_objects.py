"""Codec, kinds, manifest loading and the three-way merge."""
from __future__ import annotations

import pytest

from controlplane.api import BadRequest, Service, UnknownKind, object_from_dict
from controlplane.api.manifest import ManifestError, load_documents
from controlplane.api.merge import merge_keys_of, three_way_merge
from controlplane.api.selectors import Selector, SelectorParseError


def test_unknown_fields_survive_a_round_trip() -> None:
    doc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "x", "futureField": {"a": 1}},
           "spec": {"ports": [{"port": 80, "targetPort": "http", "someNewKnob": True}], "trafficDistribution": "PreferClose"},
           "topLevelExtra": [1, 2]}
    svc = object_from_dict(doc)
    assert isinstance(svc, Service)
    assert svc.spec.ports[0].target_port == "http"
    assert svc.to_dict() == doc


def test_mistyped_field_is_a_bad_request_naming_the_field() -> None:
    with pytest.raises(BadRequest) as exc:
        object_from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                          "spec": {"ports": [{"port": "eighty"}]}})
    assert str(exc.value) == ('Service in version "v1" cannot be handled as a Service: json: cannot unmarshal '
                              "string into Go struct field ServicePort.spec.ports.port of type int32")


def test_unknown_kind_and_wrong_version() -> None:
    with pytest.raises(UnknownKind, match='no matches for kind "Widget" in version "example.com/v1"'):
        object_from_dict({"apiVersion": "example.com/v1", "kind": "Widget"})
    with pytest.raises(UnknownKind, match='no matches for kind "Deployment" in version "extensions/v1beta1"'):
        object_from_dict({"apiVersion": "extensions/v1beta1", "kind": "Deployment"})


def test_multi_document_yaml_with_comments_and_empty_documents() -> None:
    text = """# leading comment
---
apiVersion: v1
kind: Service   # trailing comment
metadata: {name: a}
---
# only a comment
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Service, metadata: {name: b}}
- {apiVersion: v1, kind: Service, metadata: {name: c}}
"""
    docs = load_documents(text, "f.yaml")
    assert [d.data["metadata"]["name"] for d in docs] == ["a", "b", "c"]


def test_missing_kind_is_reported_like_kubectl() -> None:
    with pytest.raises(ManifestError, match=r'error validating "f.yaml": error validating data: \[kind not set\]'):
        load_documents("apiVersion: v1\nmetadata: {name: a}\n", "f.yaml")


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ManifestError, match="error parsing f.yaml: error converting YAML to JSON: yaml: line"):
        load_documents("a: [1, 2\nb: c\n", "f.yaml")


def test_three_way_merge_removes_dropped_fields_and_keeps_server_fields() -> None:
    original = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}}
    modified = {"metadata": {"labels": {"a": "1"}}, "spec": {"x": 2}}
    live = {"metadata": {"labels": {"a": "1", "b": "2", "added-by-someone": "y"}, "uid": "u"},
            "spec": {"x": 1, "clusterIP": "10.96.0.5"}}
    merged = three_way_merge(original, modified, live)
    assert merged == {"metadata": {"labels": {"a": "1", "added-by-someone": "y"}, "uid": "u"},
                      "spec": {"x": 2, "clusterIP": "10.96.0.5"}}


def _ports_merge(original: list | None, modified: list, live: list) -> list:
    wrap = lambda ports: {"spec": {"ports": ports}}   # noqa: E731
    merged = three_way_merge(wrap(original) if original is not None else None, wrap(modified), wrap(live),
                             merge_keys_of("Service"))
    return merged["spec"]["ports"]


def test_service_ports_merge_by_port_keeping_what_the_server_set() -> None:
    """ServiceSpec.Ports is patchStrategy merge, patchMergeKey port: a renamed port keeps
    its nodePort, a dropped one goes, one the last apply never named stays."""
    live = [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
            {"name": "https", "port": 443, "nodePort": 30443, "protocol": "TCP"},
            {"name": "added", "port": 8080, "nodePort": 30808, "protocol": "TCP"}]
    original = [{"name": "http", "port": 80}, {"name": "https", "port": 443}]
    assert _ports_merge(original, [{"name": "web", "port": 80}, {"name": "https", "port": 443}], live) == [
        {"name": "web", "port": 80, "nodePort": 30080, "protocol": "TCP"},
        {"name": "https", "port": 443, "nodePort": 30443, "protocol": "TCP"},
        {"name": "added", "port": 8080, "nodePort": 30808, "protocol": "TCP"}]
    assert _ports_merge(original, [{"port": 443}], live) == [
        {"port": 443, "nodePort": 30443, "protocol": "TCP"},
        {"name": "added", "port": 8080, "nodePort": 30808, "protocol": "TCP"}]
    # no last-applied (made with create -f): nothing is deleted
    assert [p["port"] for p in _ports_merge(None, [{"name": "https", "port": 443}], live)] == [80, 443, 8080]


def test_service_ports_merge_order_and_repeated_numbers() -> None:
    live = [{"port": 1, "nodePort": 30001}, {"port": 2, "nodePort": 30002}, {"port": 3, "nodePort": 30003}]
    # the modified order wins; an item only the server has keeps its place before a later one
    assert [p["port"] for p in _ports_merge([{"port": 3}], [{"port": 3}, {"port": 4}], live)] == [1, 2, 3, 4]
    assert [p["port"] for p in _ports_merge([], [{"port": 3}, {"port": 2}], live)] == [1, 3, 2]
    # one number over TCP and UDP: told apart by protocol, whatever their order
    dns = [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30054}]
    swapped = _ports_merge(None, [{"name": "dns-tcp", "port": 53}, {"name": "dns", "port": 53, "protocol": "UDP"}], dns)
    assert [(p["name"], p["nodePort"]) for p in swapped] == [("dns-tcp", 30054), ("dns", 30053)]
    # items without the key, or not maps: replaced whole (validation says what is wrong)
    assert _ports_merge(None, [None], live) == [None]


@pytest.mark.parametrize("text,labels,expected", [
    ("app=nginx", {"app": "nginx"}, True),
    ("app=nginx", {"app": "web"}, False),
    ("app!=nginx", {}, True),
    ("tier in (a, b),env", {"tier": "b", "env": "x"}, True),
    ("tier notin (a,b)", {"tier": "a"}, False),
    ("!legacy", {"legacy": "1"}, False),
    ("app==x,!legacy", {"app": "x"}, True),
])
def test_selector_parse_and_match(text: str, labels: dict, expected: bool) -> None:
    assert Selector.parse(text).matches(labels) is expected


def test_selector_errors_and_nil_vs_empty() -> None:
    with pytest.raises(SelectorParseError):
        Selector.parse("a=b c")
    assert not Selector.from_labels({}).matches({"a": "b"})
    assert Selector.everything().matches({"a": "b"})
    assert str(Selector.from_labels({"release": "canary", "app": "myapp"})) == "app=myapp,release=canary"
