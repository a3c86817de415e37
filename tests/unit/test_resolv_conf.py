"""A pod's resolv.conf as the kubelet writes it (dnsPolicy, dnsConfig), and the apiserver's
checks of those fields. Pure, no root."""
from __future__ import annotations

import pytest

from controlplane.api import Pod
from controlplane.api.validation.workloads import validate_pod
from controlplane.lab.resolvconf import ResolvConf, pod_resolv_conf

NODE = ResolvConf.parse("# the node's\nnameserver 192.168.1.100\nsearch lab.example\noptions timeout:2\n")


def pod(ns="default", policy=None, config=None) -> Pod:
    spec = {"containers": [{"name": "c", "image": "busybox"}]}
    if policy:
        spec["dnsPolicy"] = policy
    if config is not None:
        spec["dnsConfig"] = config
    return Pod.from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns}, "spec": spec})


def conf(p: Pod) -> str:
    return pod_resolv_conf(p, "10.96.0.10", "cluster.local", NODE).render()


def test_cluster_first_is_the_default_and_uses_the_pod_namespace():
    expected = ("search team-a.svc.cluster.local svc.cluster.local cluster.local lab.example\n"
                "nameserver 10.96.0.10\noptions ndots:5\n")
    assert conf(pod("team-a")) == expected
    assert conf(pod("team-a", "ClusterFirst")) == expected
    assert conf(pod("team-a", "ClusterFirstWithHostNet")) == expected


def test_default_is_the_node_resolver():
    assert conf(pod(policy="Default")) == "search lab.example\nnameserver 192.168.1.100\noptions timeout:2\n"


def test_none_is_only_dns_config():
    p = pod(policy="None", config={"nameservers": ["1.1.1.1"], "searches": ["a.example"],
                                    "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]})
    assert conf(p) == "search a.example\nnameserver 1.1.1.1\noptions ndots:2 edns0\n"


def test_dns_config_is_merged_into_cluster_first():
    p = pod(config={"nameservers": ["10.0.0.2", "10.96.0.10", "10.0.0.3", "10.0.0.4"],
                    "searches": ["svc.cluster.local", "extra.example"],
                    "options": [{"name": "ndots", "value": "1"}, {"name": "single-request"}]})
    c = pod_resolv_conf(p, "10.96.0.10", "cluster.local", NODE)
    assert c.nameservers == ["10.96.0.10", "10.0.0.2", "10.0.0.3"]  # de-duplicated, at most 3
    assert c.searches == ["default.svc.cluster.local", "svc.cluster.local", "cluster.local", "lab.example",
                          "extra.example"]
    assert c.options == ["ndots:1", "single-request"]  # replaced by name


@pytest.mark.parametrize("spec,message", [
    ({"dnsPolicy": "Sometimes"}, 'spec.dnsPolicy: Unsupported value: "Sometimes"'),
    ({"dnsPolicy": "None"}, "spec.dnsConfig: Required value"),
    ({"dnsPolicy": "None", "dnsConfig": {"searches": ["a"]}}, "spec.dnsConfig.nameservers: Required value"),
    ({"dnsConfig": {"nameservers": ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"]}},
     "must not have more than 3 nameservers"),
    ({"dnsConfig": {"nameservers": ["not-an-ip"]}}, "spec.dnsConfig.nameservers[0]: Invalid value"),
    ({"dnsConfig": {"searches": ["Bad_Domain"]}}, "spec.dnsConfig.searches[0]: Invalid value"),
    ({"dnsConfig": {"options": [{"value": "1"}]}}, "spec.dnsConfig.options[0].name: Required value"),
])
def test_dns_fields_are_validated(spec, message):
    p = Pod.from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                       "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}})
    errors = [str(e) for e in validate_pod(p)]
    assert any(message in e for e in errors), errors


def test_valid_dns_fields_pass():
    p = pod(policy="None", config={"nameservers": ["1.1.1.1"], "searches": ["a.example."]})
    assert validate_pod(p) == []
