"""Validation messages, checked against the apiserver's wording."""
from __future__ import annotations

import copy

import pytest

from controlplane.api import Invalid, object_from_dict
from controlplane.api.defaults import apply_defaults
from controlplane.api.validation import check, validate

BASE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "default"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}


def service(**spec) -> dict:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    return doc


def errors_of(doc: dict) -> list[str]:
    obj = object_from_dict(doc)
    apply_defaults(obj)
    return [str(e) for e in validate(obj)]


def test_valid_service_has_no_errors() -> None:
    assert errors_of(service()) == []


@pytest.mark.parametrize("spec,expected", [
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400"),
    ({"sessionAffinity": "Sticky"},
     'spec.sessionAffinity: Unsupported value: "Sticky": supported values: "ClientIP", "None"'),
    ({"type": "NodePort", "clusterIP": "None"},
     "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services"),
    ({"type": "LoadBalancer", "clusterIP": "None"},
     "spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for LoadBalancer services"),
    ({"ports": [{"port": 80, "nodePort": 30080}]},
     "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]},
     'spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'),
    ({"ports": [{"name": "a", "port": 80}, {"port": 81}]}, "spec.ports[1].name: Required value"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, 'spec.ports[1].name: Duplicate value: "a"'),
    ({"ports": []}, "spec.ports: Required value"),
    ({"type": "ExternalName"}, "spec.externalName: Required value"),
    ({"type": "ExternalName", "externalName": "db.example.com", "clusterIP": "10.96.0.9"},
     "spec.clusterIPs: Forbidden: may not be set for ExternalName services"),
    ({"type": "ExternalName", "externalName": "db.example.com", "ipFamilyPolicy": "SingleStack"},
     "spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services"),
    ({"type": "ExternalName", "externalName": "db.example.com", "ipFamilies": ["IPv4"]},
     "spec.ipFamilies: Forbidden: may not be set for ExternalName services"),
    ({"clusterIP": "10.96.0.300"},
     'spec.clusterIPs[0]: Invalid value: "10.96.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)'),
    ({"ports": [{"port": 80, "targetPort": "http--x"}]},
     'spec.ports[0].targetPort: Invalid value: "http--x": must not contain consecutive hyphens'),
    ({"loadBalancerSourceRanges": ["10.0.0.0/8"]},
     "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"),
    ({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8", "59.100.192.6"]},
     'spec.LoadBalancerSourceRanges[1]: Invalid value: "59.100.192.6": '
     "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
    ({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/33"]},
     'spec.LoadBalancerSourceRanges[0]: Invalid value: "10.0.0.0/33": '
     "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
    ({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/255.0.0.0"]},
     'spec.LoadBalancerSourceRanges[0]: Invalid value: "10.0.0.0/255.0.0.0": '
     "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
    ({"allocateLoadBalancerNodePorts": False},
     "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'"),
    ({"loadBalancerClass": "example.com/lb"},
     "spec.loadBalancerClass: Forbidden: may only be used when service type is 'LoadBalancer'"),
    ({"type": "LoadBalancer", "loadBalancerClass": "-bad"},
     'spec.loadBalancerClass: Invalid value: "-bad": name part must consist of alphanumeric characters, '
     "'-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  "
     "or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"),
    ({"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30100},
     "spec.healthCheckNodePort: Invalid value: 30100: "
     "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"),
    ({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 70000},
     "spec.healthCheckNodePort: Invalid value: 70000: must be between 1 and 65535, inclusive"),
    ({"externalTrafficPolicy": "Local"},
     'spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services'),
    ({"type": "LoadBalancer", "ports": [{"port": 80}, {"name": "k", "port": 10250}]},
     "spec.ports[1]: Invalid value: 10250: may not expose port 10250 externally since it is used by kubelet"),
    ({"externalIPs": ["0.0.0.0"]}, 'spec.externalIPs[0]: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)'),
    ({"externalIPs": ["192.0.2.1", "127.0.0.1"]},
     'spec.externalIPs[1]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)'),
    ({"externalIPs": ["169.254.1.1"]},
     'spec.externalIPs[0]: Invalid value: "169.254.1.1": may not be in the link-local range (169.254.0.0/16, fe80::/10)'),
    ({"externalIPs": ["224.0.0.1"]}, 'spec.externalIPs[0]: Invalid value: "224.0.0.1": '
     "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"),
    ({"externalIPs": ["10.0.0.300"]}, 'spec.externalIPs[0]: Invalid value: "10.0.0.300": '
     "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
])
def test_service_rule(spec: dict, expected: str) -> None:
    assert expected in errors_of(service(**spec))


def test_session_affinity_none_drops_the_client_ip_config() -> None:
    """SetDefaults_Service: None carries no config (an apply from ClientIP to None keeps
    the stored, server-defaulted one otherwise, which validation would refuse)."""
    obj = object_from_dict(service(sessionAffinity="None", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10}}))
    apply_defaults(obj)
    assert obj.spec.session_affinity_config is None and validate(obj) == []


@pytest.mark.parametrize("stype", ["ClusterIP", "NodePort", "LoadBalancer"])
def test_load_balancer_ip_is_no_error_on_any_type(stype: str) -> None:
    """ValidateService has no rule for spec.loadBalancerIP on other types (LB-IPAM reads
    it only for LoadBalancer services)."""
    assert errors_of(service(type=stype, loadBalancerIP="192.168.60.10")) == []


def test_external_name_without_families_is_valid() -> None:
    assert errors_of(service(type="ExternalName", externalName="db.example.com", ports=None, selector=None)) == []


def test_external_ips_outside_the_special_ranges_are_valid() -> None:
    """Only link-local multicast is special (Go's IsLinkLocalMulticast), not all multicast."""
    assert errors_of(service(externalIPs=["192.0.2.10", "239.1.2.3"])) == []


def test_source_ranges_accept_cidrs_with_host_bits_and_padding() -> None:
    assert errors_of(service(type="LoadBalancer", loadBalancerSourceRanges=[" 10.0.0.1/8 ", "2001:db8::/64"])) == []


def test_source_ranges_annotation_is_checked_when_the_field_is_empty() -> None:
    doc = service(type="LoadBalancer")
    doc["metadata"]["annotations"] = {"service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8, 1.2.3.4"}
    assert errors_of(doc) == [
        'metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]: Invalid value: "1.2.3.4": '
        "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
    obj = object_from_dict(service(type="LoadBalancer"))
    obj.metadata.annotations = {"service.beta.kubernetes.io/load-balancer-source-ranges": " 10.0.0.0/8, 1.2.3.0/24 "}
    assert obj.source_ranges == ["10.0.0.0/8", "1.2.3.0/24"]


def updated_errors(old_spec: dict, new_spec: dict) -> list[str]:
    old, new = object_from_dict(service(**old_spec)), object_from_dict(service(**new_spec))
    for o in (old, new):
        apply_defaults(o)
    return [str(e) for e in validate(new, old)]


def test_health_check_node_port_and_load_balancer_class_are_immutable() -> None:
    lb_local = {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}
    assert "spec.healthCheckNodePort: Forbidden: field is immutable" in updated_errors(
        {**lb_local, "healthCheckNodePort": 30100}, {**lb_local, "healthCheckNodePort": 30101})
    assert 'spec.loadBalancerClass: Invalid value: "b.io/y": may not change once set' in updated_errors(
        {"type": "LoadBalancer", "loadBalancerClass": "a.io/x"}, {"type": "LoadBalancer", "loadBalancerClass": "b.io/y"})


def test_duplicate_port_protocol_pair() -> None:
    errs = errors_of(service(ports=[{"name": "a", "port": 80}, {"name": "b", "port": 80}]))
    assert errs[0].startswith('spec.ports[1]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP"')
    # the same number on TCP and UDP is fine
    assert errors_of(service(ports=[{"name": "a", "port": 53, "protocol": "UDP"}, {"name": "b", "port": 53}])) == []


def test_service_names_are_dns1035_labels() -> None:
    doc = service()
    doc["metadata"]["name"] = "1abc"
    assert errors_of(doc) == [
        'metadata.name: Invalid value: "1abc": a DNS-1035 label must consist of lower case alphanumeric characters '
        "or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  "
        "or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"]


def test_headless_service_may_have_no_ports_and_default_affinity_timeout() -> None:
    assert errors_of(service(clusterIP="None", ports=None)) == []
    obj = object_from_dict(service(sessionAffinity="ClientIP"))
    apply_defaults(obj)
    assert obj.affinity_timeout_seconds == 10800


def test_invalid_error_names_object_and_lists_every_field() -> None:
    obj = object_from_dict(service(ports=[{"port": 0, "protocol": "ICMP"}]))
    apply_defaults(obj)
    with pytest.raises(Invalid) as exc:
        check(obj)
    assert exc.value.kind == "Service" and exc.value.name == "x"
    assert [e.field for e in exc.value.errors] == [
        "spec.ports[0].port", "spec.ports[0].protocol", "spec.ports[0].targetPort"]  # targetPort defaults to port


def test_cluster_ip_is_immutable_except_through_external_name() -> None:
    old = object_from_dict(service(clusterIP="10.96.0.20"))
    new = object_from_dict(service(clusterIP="10.96.0.21"))
    for o in (old, new):
        apply_defaults(o)
    assert 'spec.clusterIPs[0]: Invalid value: []string{"10.96.0.21"}: may not change once set' in \
        [str(e) for e in validate(new, old)]


@pytest.mark.parametrize("spec,expected", [
    ({"clusterIP": "10.96.5.7", "clusterIPs": ["10.96.5.8"]},
     'spec.clusterIPs: Invalid value: []string{"10.96.5.8"}: first value must match `clusterIP`'),
    ({"clusterIPs": ["10.96.7.7"]},
     'spec.clusterIPs: Invalid value: []string{"10.96.7.7"}: must be empty when `clusterIP` is not specified'),
    ({"ipFamilies": ["IPv6"]}, 'spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster'),
    ({"ipFamilies": ["IPv5"]}, 'spec.ipFamilies[0]: Unsupported value: "IPv5": supported values: "IPv4", "IPv6"'),
    ({"ipFamilies": ["IPv4", "IPv4"]}, 'spec.ipFamilies[1]: Duplicate value: "IPv4"'),
    ({"ipFamilyPolicy": "Whatever"}, 'spec.ipFamilyPolicy: Unsupported value: "Whatever": '
     'supported values: "PreferDualStack", "RequireDualStack", "SingleStack"'),
    ({"ipFamilyPolicy": "RequireDualStack"},
     'spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services'),
])
def test_ip_families_and_cluster_ips_on_a_single_stack_ipv4_cluster(spec: dict, expected: str) -> None:
    """svcxdp's clusters are IPv4 only: what the apiserver of such a cluster refuses (a
    Service stored as IPv6, or with a clusterIPs list its clusterIP contradicts, was kept)."""
    assert expected in errors_of(service(**spec))


def test_prefer_dual_stack_is_single_stack_ipv4_here() -> None:
    assert errors_of(service(ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv4"])) == []


def test_a_headless_service_without_selector_may_name_both_families() -> None:
    """As a real cluster exports one (RequireDualStack is its default there)."""
    doc = service(clusterIP="None", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"])
    del doc["spec"]["selector"]
    assert errors_of(doc) == []


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
              "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [{"name": "web", "image": "nginx",
                                                             "ports": [{"name": "http", "containerPort": 80}]}]}}}}


def deployment_errors(mutate) -> list[str]:
    doc = copy.deepcopy(DEPLOYMENT)
    mutate(doc)
    return errors_of(doc)


def test_deployment_rules() -> None:
    assert deployment_errors(lambda d: None) == []
    assert "spec.replicas: Invalid value: -1: must be greater than or equal to 0" in deployment_errors(
        lambda d: d["spec"].update(replicas=-1))
    assert 'spec.template.metadata.labels: Invalid value: map[string]string{"app":"other"}: `selector` does not match template `labels`' in \
        deployment_errors(lambda d: d["spec"]["template"]["metadata"].update(labels={"app": "other"}))
    assert "spec.template.spec.containers[0].image: Required value" in deployment_errors(
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("image"))
    assert "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive" in \
        deployment_errors(lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort=70000))
    assert "spec.selector: Required value" in deployment_errors(lambda d: d["spec"].pop("selector"))


def test_endpointslice_rules() -> None:
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.244.1.300"]}, {"addresses": []}]}
    errs = errors_of(doc)
    assert 'endpoints[0].addresses[0]: Invalid value: "10.244.1.300": must be a valid IPv4 address' in errs
    assert "endpoints[1].addresses: Required value: must contain at least 1 address" in errs


def slice_doc(*endpoints: list[str], address_type: str = "IPv4") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s", "namespace": "default"}, "addressType": address_type,
            "ports": [{"port": 80}], "endpoints": [{"addresses": a} for a in endpoints]}


def test_endpointslice_refuses_special_addresses_as_endpoints_do() -> None:
    """ValidateNonSpecialIP, as for v1 Endpoints: the agent would program such a backend
    (169.254.169.254 is a cloud's metadata service)."""
    errs = errors_of(slice_doc(["127.0.0.1"], ["169.254.169.254"], ["224.0.0.5"], ["0.0.0.0"], ["10.244.1.5"],
                               ["10.244.1.6", "127.0.0.2"]))
    assert errs == [
        'endpoints[0].addresses[0]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)',
        'endpoints[1].addresses[0]: Invalid value: "169.254.169.254": '
        "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        'endpoints[2].addresses[0]: Invalid value: "224.0.0.5": '
        "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        'endpoints[3].addresses[0]: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)',
        'endpoints[5].addresses[1]: Invalid value: "127.0.0.2": may not be in the loopback range (127.0.0.0/8, ::1/128)',
    ]
    assert errors_of(slice_doc(["::1"], address_type="IPv6")) == [
        'endpoints[0].addresses[0]: Invalid value: "::1": may not be in the loopback range (127.0.0.0/8, ::1/128)']


def test_endpointslice_endpoint_may_list_up_to_100_addresses() -> None:
    hundred = [f"10.244.1.{i}" for i in range(1, 101)]
    assert errors_of(slice_doc(hundred[:2])) == []
    assert errors_of(slice_doc(hundred)) == []
    assert errors_of(slice_doc(hundred + ["10.244.2.1"])) == [
        "endpoints[0].addresses: Too many: 101: must have at most 100 items"]


@pytest.mark.parametrize("hostname", ["x y", "a.b", "_http", "Web-0", "-a", "a" * 64, ""])
def test_endpointslice_hostname_is_a_dns1123_label(hostname: str) -> None:
    """DNS publishes it as <hostname>.<service>.<ns>.svc: anything but one label breaks the name."""
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.244.1.5"], "hostname": "web-0"},
                         {"addresses": ["10.244.1.6"], "hostname": hostname}]}
    obj = object_from_dict(doc)
    apply_defaults(obj)
    with pytest.raises(Invalid) as exc:
        check(obj)
    assert exc.value.kind == "EndpointSlice" and exc.value.name == "s"
    assert {e.field for e in exc.value.errors} == {"endpoints[1].hostname"}
    assert f'endpoints[1].hostname: Invalid value: "{hostname}": ' in str(exc.value)


def test_endpoints_reject_loopback() -> None:
    doc = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e", "namespace": "default"},
           "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 80}]}]}
    assert errors_of(doc) == [
        'subsets[0].addresses[0].ip: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)']


def test_endpointslice_hints_follow_the_apiservers_rules() -> None:
    """At most 8 zones (label values) and 8 nodes (node names) per endpoint, none twice."""
    def with_hints(hints: dict) -> list[str]:
        doc = slice_doc(["10.244.1.5"])
        doc["endpoints"][0]["hints"] = hints
        return errors_of(doc)
    assert with_hints({"forZones": [{"name": "eu-west-1a"}], "forNodes": [{"name": "node-1.example"}]}) == []
    assert with_hints({"forZones": [{"name": f"z{i}"} for i in range(9)]}) == [
        "endpoints[0].hints.forZones: Too many: 9: must have at most 8 items"]
    assert with_hints({"forNodes": [{"name": f"n{i}"} for i in range(9)]}) == [
        "endpoints[0].hints.forNodes: Too many: 9: must have at most 8 items"]
    errs = with_hints({"forZones": [{"name": "a"}, {"name": "a"}, {"name": "bad zone"}],
                       "forNodes": [{"name": "Node_1"}]})
    assert errs[0] == 'endpoints[0].hints.forZones[1].name: Duplicate value: "a"'
    assert errs[1].startswith('endpoints[0].hints.forZones[2].name: Invalid value: "bad zone": a valid label')
    assert errs[2].startswith('endpoints[0].hints.forNodes[0].name: Invalid value: "Node_1": a lowercase RFC 1123')
    assert len(errs) == 3


@pytest.mark.parametrize("value", ["PreferClose", "PreferSameZone", "PreferSameNode"])
def test_traffic_distribution_takes_the_apis_values(value: str) -> None:
    assert errors_of(service(trafficDistribution=value)) == []


def test_traffic_distribution_refuses_another_value() -> None:
    assert errors_of(service(trafficDistribution="preferclose")) == [
        'spec.trafficDistribution: Unsupported value: "preferclose": supported values: '
        '"PreferClose", "PreferSameNode", "PreferSameZone"']


def test_describe_shows_the_traffic_distribution() -> None:
    import re

    from controlplane.api.service import Service
    from controlplane.kubectl.describe import describe_service
    svc = object_from_dict(service(trafficDistribution="PreferClose"))
    assert isinstance(svc, Service)
    assert re.search(r"^Traffic Distribution:\s+PreferClose$", describe_service(svc, None), re.M)
    assert "Traffic Distribution" not in describe_service(object_from_dict(service()), None)
