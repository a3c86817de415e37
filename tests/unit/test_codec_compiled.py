"""The straight-line decoders agree with the generic codec, and fall back to it for errors."""
from __future__ import annotations

import pytest

from controlplane.api.codec import DecodeError, _decode_obj, decode
from controlplane.api.endpoints import EndpointSlice
from controlplane.api.service import Service

SVC = {"apiVersion": "v1", "kind": "Service", "surprise": {"a": 1},
       "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}, "resourceVersion": "7",
                    "ownerReferences": [{"name": "o", "controller": True, "x": 1}], "finalizers": ["f"]},
       "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": None}],
                "clusterIP": "10.96.0.10", "selector": {"app": "web"}, "externalIPs": ["1.2.3.4"],
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}, "newField": [1]},
       "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, None]}}}
SLICE = {"metadata": {"name": "web-1"}, "addressType": "IPv4",
         "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": False, "serving": True},
                        "targetRef": {"kind": "Pod", "name": "p"}, "nodeName": "n1"}],
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


@pytest.mark.parametrize("cls,doc", [(Service, SVC), (EndpointSlice, SLICE), (Service, {})])
def test_same_as_generic(cls, doc) -> None:
    fast = decode(cls, doc)
    assert fast == _decode_obj(cls, doc)
    assert fast.extra == _decode_obj(cls, doc).extra
    assert vars(fast).keys() == vars(_decode_obj(cls, doc)).keys()


def test_integral_float_is_converted_like_before() -> None:
    svc = decode(Service, {"spec": {"ports": [{"port": 80.0}]}})
    assert svc.spec.ports[0].port == 80 and type(svc.spec.ports[0].port) is int


def test_an_integral_float_target_port_is_a_number() -> None:
    """YAML's `targetPort: 8080.0` reaches the apiserver as 8080 (kubectl's YAML-to-JSON):
    a port number, not something the endpoints controller cannot resolve."""
    svc = decode(Service, {"spec": {"ports": [{"port": 80, "targetPort": 8080.0}]}})
    assert svc.spec.ports[0].target_port == 8080 and type(svc.spec.ports[0].target_port) is int
    for bad in (8080.5, True):   # an optional IntOrString was not checked at all before
        with pytest.raises(DecodeError, match="ServicePort.spec.ports.targetPort of type intstr.IntOrString"):
            decode(Service, {"spec": {"ports": [{"port": 80, "targetPort": bad}]}})


@pytest.mark.parametrize("doc,message", [
    ({"spec": {"ports": [{"port": "80"}]}}, "ServicePort.spec.ports.port of type int32"),
    ({"spec": {"clusterIP": 1}}, "ServiceSpec.spec.clusterIP of type string"),
    ({"metadata": {"labels": {"a": 1}}}, "of type string"),
    ({"spec": {"externalIPs": ["a", 2]}}, "of type string"),
    ({"spec": {"ports": [{"protocol": True}]}}, "ServicePort.spec.ports.protocol of type string"),
    ({"spec": "x"}, "ServiceSpec"),
])
def test_errors_come_from_the_generic_decoder(doc, message) -> None:
    with pytest.raises(DecodeError) as fast:
        decode(Service, doc)
    with pytest.raises(DecodeError) as generic:
        _decode_obj(Service, doc)
    assert str(fast.value) == str(generic.value)
    assert message in str(fast.value)


def test_decoded_objects_do_not_share_input_containers() -> None:
    svc = decode(Service, SVC)
    assert svc.metadata.labels is not SVC["metadata"]["labels"]
    assert svc.spec.external_ips is not SVC["spec"]["externalIPs"]
    svc.spec.ports[0].port = 1
    assert SVC["spec"]["ports"][0]["port"] == 80
