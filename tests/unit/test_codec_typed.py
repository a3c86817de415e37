"""The typed text decoders (codec_typed) give what the codec gives for the parsed text, and
refuse (msgspec.DecodeError) every document they would read differently."""
from __future__ import annotations

import copy
import json

import msgspec
import pytest

from controlplane.api.codec import decode
from controlplane.api.codec_typed import typed_decoder
from controlplane.api.endpoints import EndpointSlice
from controlplane.api.service import Service
from controlplane.controllers.service_view import service_text_read

# Documents the typed decoder takes: every key modelled, every value of its exact type.
TAKEN = [
    {},
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "7", "generation": 2,
                  "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"app": "web"},
                  "annotations": {"a": "b"}, "finalizers": ["f"],
                  "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "1",
                                       "controller": True, "blockOwnerDeletion": False}]},
     "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080,
                         "appProtocol": "h2c"},
                        {"port": 53, "protocol": "UDP", "targetPort": "dns"}, {}],
              "selector": {"app": "web"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
              "type": "LoadBalancer", "externalIPs": ["1.2.3.4"], "sessionAffinity": "ClientIP",
              "loadBalancerIP": "5.6.7.8", "loadBalancerSourceRanges": ["10.0.0.0/8"], "externalName": "x",
              "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000, "publishNotReadyAddresses": True,
              "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}, "ipFamilies": ["IPv4"],
              "ipFamilyPolicy": "SingleStack", "allocateLoadBalancerNodePorts": False,
              "loadBalancerClass": "c", "internalTrafficPolicy": "Cluster"},
     "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8", "hostname": "h", "ipMode": "VIP"}, {}]},
                "conditions": [{"type": "T", "status": "True", "observedGeneration": 1,
                                "lastTransitionTime": "t", "reason": "r", "message": "m"}]}},
    {"metadata": None, "spec": None, "status": None},                  # null, not the factory's object
    {"metadata": {}, "spec": {"sessionAffinityConfig": {}}, "status": {"loadBalancer": {}}},
    {"spec": {"ports": [], "selector": {}, "externalIPs": [], "clusterIP": ""}},
    {"spec": {"ports": [{"port": 18446744073709551616}]}},             # beyond int64: json.loads' int
    {"kind": "Other", "apiVersion": "v2", "metadata": {"name": "x"}},  # from_dict restamps kind
]

# Documents it refuses; the codec keeps, converts or reports them.
REFUSED = [
    {"surprise": 1},                                        # an unknown key: the codec's extra
    {"metadata": {"name": "x", "extra": {}}},               # "extra" is a key like any other
    {"spec": {"ports": [{"port": 80.0}]}},                  # the codec converts an integral float
    {"spec": {"ports": [None]}},                            # a null item the codec keeps as None
    {"metadata": {"labels": {"a": None}}},                  # a null value likewise
    {"spec": {"clusterIP": 1}},                             # the codec's error
    {"spec": {"ports": [{"targetPort": True}]}},            # a bool is no IntOrString
    {"spec": {"publishNotReadyAddresses": 1}},              # an int is no bool
    {"spec": "x"},
    [],
]


def _codec(cls: type, text: str):
    return decode(cls, msgspec.json.decode(text))


@pytest.mark.parametrize("doc", TAKEN)
def test_taken_documents_decode_as_the_codec_does(doc) -> None:
    text = json.dumps(doc)
    typed, want = typed_decoder(Service)(text), _codec(Service, text)
    assert typed == want
    assert list(vars(typed)) == list(vars(want))     # the same attributes, in the same order
    assert typed.extra == {} and typed.extra is not typed_decoder(Service)(text).extra
    # and as Service.from_dict, through the reader the agent uses
    assert service_text_read(text) == Service.from_dict(copy.deepcopy(doc))


def test_taken_nested_objects_match_field_by_field() -> None:
    text = json.dumps(TAKEN[1])
    typed, want = typed_decoder(Service)(text), _codec(Service, text)
    for a, b in [(typed.metadata, want.metadata), (typed.spec, want.spec), (typed.status, want.status),
                 (typed.spec.ports[0], want.spec.ports[0]), (typed.status.load_balancer, want.status.load_balancer)]:
        assert type(a) is type(b) and vars(a) == vars(b) and list(vars(a)) == list(vars(b))
    assert typed.status.load_balancer.ingress[1].extra == {}


def test_absent_objects_are_the_factorys() -> None:
    svc = typed_decoder(Service)("{}")
    assert svc.spec == Service().spec and svc.status == Service().status and svc.metadata == Service().metadata
    assert svc.spec is not typed_decoder(Service)("{}").spec
    for got, want in [(svc.spec, Service().spec), (svc.status, Service().status), (svc.metadata, Service().metadata)]:
        assert vars(got) == vars(want) and list(vars(got)) == list(vars(want))


@pytest.mark.parametrize("doc", REFUSED)
def test_refused_documents_raise_and_the_reader_takes_the_codec(doc) -> None:
    text = json.dumps(doc)
    with pytest.raises(msgspec.DecodeError):
        typed_decoder(Service)(text)
    try:
        want = Service.from_dict(json.loads(text))
    except Exception as exc:   # the same error from the reader
        with pytest.raises(type(exc)) as got:
            service_text_read(text)
        assert str(got.value) == str(exc)
    else:
        assert service_text_read(text) == want


def test_other_kinds_compile_and_match() -> None:
    doc = {"metadata": {"name": "s"}, "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": False},
                          "targetRef": {"kind": "Pod", "name": "p"}, "nodeName": "n1", "zone": "z"}, {}],
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    text = json.dumps(doc)
    assert typed_decoder(EndpointSlice)(text) == _codec(EndpointSlice, text)
    assert typed_decoder(EndpointSlice)(text).endpoints[1].conditions == _codec(EndpointSlice, text).endpoints[1].conditions


def test_random_documents_decode_as_the_codec_does_or_are_refused() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    anything = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.sampled_from([1.0, 2.5]),
                         st.sampled_from(["", "a", "TCP"]), st.just([]), st.just({}))
    text_or_any = st.one_of(st.sampled_from(["", "x", "10.0.0.1"]), anything)
    port = st.fixed_dictionaries({}, optional={"name": text_or_any, "port": st.one_of(st.integers(0, 70000), anything),
                                               "targetPort": st.one_of(st.integers(0, 9), st.just("http"), anything),
                                               "protocol": text_or_any, "nodePort": anything, "odd": anything})
    spec = st.fixed_dictionaries({}, optional={
        "ports": st.one_of(st.lists(port, max_size=3), anything), "clusterIP": text_or_any,
        "externalIPs": st.one_of(st.lists(text_or_any, max_size=2), anything),
        "selector": st.one_of(st.dictionaries(st.sampled_from(["a", "b"]), text_or_any, max_size=2), anything),
        "sessionAffinityConfig": st.one_of(st.fixed_dictionaries({}, optional={
            "clientIP": st.one_of(st.fixed_dictionaries({}, optional={"timeoutSeconds": anything}), anything)}),
            anything),
        "type": text_or_any, "publishNotReadyAddresses": anything})
    meta = st.fixed_dictionaries({}, optional={"name": text_or_any, "namespace": text_or_any,
                                               "labels": st.one_of(st.dictionaries(st.sampled_from(["a", "b"]),
                                                                                   text_or_any, max_size=2), anything),
                                               "generation": anything})
    status = st.fixed_dictionaries({}, optional={"loadBalancer": st.one_of(st.fixed_dictionaries({}, optional={
        "ingress": st.one_of(st.lists(st.one_of(st.fixed_dictionaries({}, optional={"ip": text_or_any}), anything),
                                      max_size=2), anything)}), anything)})
    service = st.fixed_dictionaries({}, optional={"metadata": st.one_of(meta, anything), "spec": st.one_of(spec, anything),
                                                  "status": st.one_of(status, anything), "kind": text_or_any,
                                                  "apiVersion": text_or_any, "unknown": anything})
    taken = []

    @settings(max_examples=400, deadline=None)
    @given(service)
    def check(doc: dict) -> None:
        text = json.dumps(doc)
        try:
            typed = typed_decoder(Service)(text)
        except msgspec.DecodeError:
            return
        taken.append(doc)
        want = _codec(Service, text)
        assert typed == want and list(vars(typed)) == list(vars(want))
        assert service_text_read(text) == Service.from_dict(doc)

    check()
    assert len(taken) > 20, "the random documents must include ones the typed decoder takes"
