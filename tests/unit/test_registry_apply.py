"""`svcctl apply` / `create -f` against kube-apiserver + kubectl: preconditions, the
strategic merge of a Service's ports, generateName, updates between types, nulls."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from controlplane.api import Service
from controlplane.api.kinds import resolve
from controlplane.api.merge import LAST_APPLIED
from controlplane.controllers.registry import MODE_APPLY, MODE_CREATE, BatchError, Manifest, Registry
from controlplane.store import SqliteStore
from tests.unit.cli_kit import run, state_dir  # noqa: F401 (state_dir: an autouse fixture)


def service_doc(name: str, **spec) -> dict:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(SqliteStore(tmp_path / "r.db"))


def apply(registry: Registry, *docs: dict, mode: str = MODE_APPLY) -> list[Service]:
    return [o.obj for o in registry.apply([Manifest(copy.deepcopy(d), "t.yaml") for d in docs], "default", mode)]


def write(tmp_path: Path, name: str, *docs: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


# ---------------------------------------------------------------------- finding 1
def test_a_stale_resource_version_is_a_conflict_and_nothing_of_the_batch_is_applied(capsys, tmp_path) -> None:
    """`get -o yaml` saved, the object changed since, the saved file applied again: the
    apiserver's optimistic lock refuses it (409) instead of undoing the change."""
    assert run(capsys, "apply", "-f", write(tmp_path, "a.yaml", service_doc("web")))[0] == 0
    code, saved, _ = run(capsys, "get", "svc", "web", "-o", "yaml")
    assert code == 0
    assert run(capsys, "apply", "-f", write(tmp_path, "np.yaml", service_doc("web", type="NodePort")))[0] == 0
    stale = write(tmp_path, "stale.yaml", yaml.safe_load(saved), service_doc("other"))
    code, _, err = run(capsys, "apply", "-f", stale)
    assert code == 1
    assert ('Error from server (Conflict): error when patching "' + stale + '": Operation cannot be fulfilled on '
            'services "web": the object has been modified; please apply your changes to the latest version and '
            "try again") in err
    code, out, _ = run(capsys, "get", "svc", "-o", "name")
    assert "service/web" in out and "service/other" not in out
    code, out, _ = run(capsys, "get", "svc", "web", "-o", "json")
    live = json.loads(out)
    assert live["spec"]["type"] == "NodePort"
    recorded = json.loads(live["metadata"]["annotations"][LAST_APPLIED])
    assert "resourceVersion" not in recorded["metadata"] and "uid" not in recorded["metadata"]


def test_the_live_resource_version_applies_and_is_not_recorded(registry: Registry) -> None:
    (first,) = apply(registry, service_doc("web"))
    doc = service_doc("web", type="NodePort")
    doc["metadata"].update(resourceVersion=first.metadata.resource_version, uid=first.metadata.uid)
    (second,) = apply(registry, doc)
    assert second.type == "NodePort"
    recorded = json.loads(second.annotations[LAST_APPLIED])
    assert set(recorded["metadata"]) == {"name", "namespace"}


def test_another_objects_uid_is_a_failed_precondition(registry: Registry) -> None:
    (first,) = apply(registry, service_doc("web"))
    doc = service_doc("web", type="NodePort")
    doc["metadata"]["uid"] = "0b7d2a6e-0000-4000-8000-000000000000"
    with pytest.raises(BatchError) as exc:
        apply(registry, doc)
    (failure,) = exc.value.failures
    assert str(failure.error) == (
        'Operation cannot be fulfilled on services "web": Precondition failed: UID in precondition: '
        f"0b7d2a6e-0000-4000-8000-000000000000, UID in object meta: {first.metadata.uid}")
    assert registry.store.get(Service, "default", "web").type == "ClusterIP"


# ---------------------------------------------------------------------- finding 2
def test_renaming_a_port_keeps_every_node_port(registry: Registry) -> None:
    (before,) = apply(registry, service_doc("pr", type="NodePort", ports=[{"name": "http", "port": 80},
                                                                          {"name": "https", "port": 443}]))
    (after,) = apply(registry, service_doc("pr", type="NodePort", ports=[{"name": "web", "port": 80},
                                                                         {"name": "https", "port": 443}]))
    assert [(p.name, p.port) for p in after.ports] == [("web", 80), ("https", 443)]
    assert after.node_ports == before.node_ports


def test_dropping_a_port_keeps_the_other_ports_node_port(registry: Registry) -> None:
    (before,) = apply(registry, service_doc("pr", type="NodePort", ports=[{"name": "http", "port": 80},
                                                                          {"name": "https", "port": 443}]))
    (after,) = apply(registry, service_doc("pr", type="NodePort", ports=[{"port": 443}]))
    assert [(p.name, p.port, p.node_port) for p in after.ports] == [(None, 443, before.ports[1].node_port)]


@pytest.mark.parametrize("ports", [[{"name": "b", "port": 81}], [{"name": "b", "port": 81}, {"name": "a", "port": 80}],
                                   [{"name": "b", "port": 81}, {"name": "c", "port": 82}]])
def test_node_port_to_cluster_ip_with_ports_dropped_or_reordered(registry: Registry, ports: list) -> None:
    """As the apiserver's sameNodePorts: leaving NodePort clears the nodePorts whenever no
    nodePort is new, whatever became of the ports (they were cleared only when the lists
    matched position by position: dropping or reordering a port refused the change)."""
    apply(registry, service_doc("np", type="NodePort", ports=[{"name": "a", "port": 80}, {"name": "b", "port": 81}]))
    (after,) = apply(registry, service_doc("np", type="ClusterIP", ports=ports))
    assert after.type == "ClusterIP" and [p.node_port for p in after.ports] == [None] * len(ports)


def test_apply_over_create_keeps_ports_it_never_named(registry: Registry) -> None:
    """No last-applied configuration (made by `create -f`): kubectl deletes nothing."""
    (before,) = apply(registry, service_doc("pr", type="NodePort", ports=[{"name": "http", "port": 80},
                                                                          {"name": "https", "port": 443}]),
                      mode=MODE_CREATE)
    (after,) = apply(registry, service_doc("pr", type="NodePort", ports=[{"name": "https", "port": 443}]))
    assert [(p.port, p.node_port) for p in after.ports] == [(p.port, p.node_port) for p in before.ports]


# ---------------------------------------------------------------------- finding 3
SUFFIX = "[bcdfghjklmnpqrstvwxz2456789]{5}"


def test_create_with_generate_name_names_each_object(capsys, tmp_path) -> None:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "gen-"}, "spec": {"ports": [{"port": 80}]}}
    path = write(tmp_path, "gen.yaml", doc)
    names = []
    for _ in range(2):
        code, out, _ = run(capsys, "create", "-f", path)
        assert code == 0
        names.append(re.fullmatch(f"service/(gen-{SUFFIX}) created\n", out).group(1))
    assert names[0] != names[1]
    code, out, _ = run(capsys, "get", "svc", "-o", "name")
    assert {f"service/{n}" for n in names} <= set(out.split())


def test_generate_name_is_validated_and_cut_to_fit(registry: Registry) -> None:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "Gen_"}, "spec": {"ports": [{"port": 80}]}}
    with pytest.raises(BatchError) as exc:
        apply(registry, doc, mode=MODE_CREATE)
    fields = [e.field for e in exc.value.failures[0].error.errors]
    assert fields == ["metadata.generateName", "metadata.name"]
    doc["metadata"]["generateName"] = "a" * 62   # a valid prefix, cut so that name fits 63
    (svc,) = apply(registry, doc, mode=MODE_CREATE)
    assert re.fullmatch("a{58}" + SUFFIX, svc.name)


def test_apply_refuses_generate_name_as_kubectl_does(capsys, tmp_path) -> None:
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"generateName": "gen-"}, "spec": {"ports": [{"port": 80}]}}
    code, _, err = run(capsys, "apply", "-f", write(tmp_path, "gen.yaml", doc, service_doc("other")))
    assert code == 1 and err.strip() == "error: from gen-: cannot use generate name with apply"
    assert "service/other" not in run(capsys, "get", "svc", "-o", "name")[1]


# ---------------------------------------------------------------------- finding 4
def test_cluster_ip_to_external_name_with_an_empty_cluster_ip(registry: Registry) -> None:
    apply(registry, service_doc("web", selector={"app": "web"}))
    (ext,) = apply(registry, service_doc("web", type="ExternalName", externalName="example.com", clusterIP="",
                                         ports=None))
    assert ext.type == "ExternalName" and not ext.spec.cluster_ip and not ext.spec.cluster_ips


def test_cluster_ip_to_external_name_with_an_empty_cluster_ip_left_in_last_applied(registry: Registry) -> None:
    apply(registry, service_doc("web", clusterIP=""))
    (ext,) = apply(registry, service_doc("web", type="ExternalName", externalName="example.com", ports=None))
    assert ext.type == "ExternalName" and not ext.spec.cluster_ips and not ext.spec.ip_families


# ---------------------------------------------------------------------- finding 5
def test_client_ip_affinity_turned_off_by_apply(registry: Registry) -> None:
    (sticky,) = apply(registry, service_doc("sa", sessionAffinity="ClientIP"))
    assert sticky.affinity_timeout_seconds == 10800
    (plain,) = apply(registry, service_doc("sa", sessionAffinity="None"))
    assert plain.spec.session_affinity == "None" and plain.spec.session_affinity_config is None


# ---------------------------------------------------------------------- finding 9
def test_load_balancer_to_node_port_keeping_load_balancer_ip(registry: Registry) -> None:
    apply(registry, service_doc("lbip", type="LoadBalancer", loadBalancerIP="192.168.60.10"))
    (np,) = apply(registry, service_doc("lbip", type="NodePort", loadBalancerIP="192.168.60.10"))
    assert np.type == "NodePort" and np.spec.load_balancer_ip == "192.168.60.10"


# ---------------------------------------------------------------------- finding 10
def test_external_name_with_family_fields_is_refused(registry: Registry) -> None:
    doc = service_doc("eni", type="ExternalName", externalName="example.com", ipFamilyPolicy="SingleStack",
                      ipFamilies=["IPv4"], ports=None)
    with pytest.raises(BatchError) as exc:
        apply(registry, doc)
    assert [str(e) for e in exc.value.failures[0].error.errors] == [
        "spec.ipFamilies: Forbidden: may not be set for ExternalName services",
        "spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services"]


# ---------------------------------------------------------------------- finding 6
VALID = [
    service_doc("s", type="LoadBalancer", selector={"app": "x"}, externalIPs=["1.2.3.4"],
                sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}},
                ports=[{"name": "a", "port": 80, "targetPort": "http"}, {"name": "b", "port": 81}]),
    {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e"},
     "subsets": [{"addresses": [{"ip": "10.1.1.1", "targetRef": {"kind": "Pod", "name": "p"}}],
                  "notReadyAddresses": [{"ip": "10.1.1.2"}], "ports": [{"name": "a", "port": 80}]}]},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "es", "labels": {"kubernetes.io/service-name": "s"}}, "addressType": "IPv4",
     "ports": [{"name": "a", "port": 80}],
     "endpoints": [{"addresses": ["10.1.1.1"], "conditions": {"ready": True}, "hostname": "h"}]},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "x"}},
     "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]},
     "status": {"phase": "Running", "podIP": "10.1.1.1", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
     "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}},
              "template": {"metadata": {"labels": {"app": "x"}},
                           "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}}}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nsx", "labels": {"a": "b"}}},
]


def _with_one_null(doc: dict) -> list[tuple[tuple, dict]]:
    """Every copy of `doc` with one value (a key's, or a list item) made null."""
    out = []

    def walk(value, path):
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, sub in items:
            if path == () and key in ("apiVersion", "kind"):
                continue
            mutated = copy.deepcopy(doc)
            target = mutated
            for p in path:
                target = target[p]
            target[key] = None
            out.append((path + (key,), mutated))
            walk(sub, path + (key,))
    walk(doc, ())
    return out


@pytest.mark.parametrize("doc", VALID, ids=lambda d: d["kind"])
def test_a_null_anywhere_is_accepted_or_a_field_error(registry: Registry, doc: dict) -> None:
    """The apiserver decodes null into a value type as its zero value (`spec: null`,
    `ports: [null]`, `selector: {a: null}`): the result is accepted or refused with field
    errors, on create and on apply over nothing or over the valid object; never a crash."""
    cls = resolve(doc["apiVersion"], doc["kind"])
    namespace = "default" if cls.NAMESPACED else ""
    for path, mutated in _with_one_null(doc):
        for mode, over_valid in ((MODE_CREATE, False), (MODE_APPLY, False), (MODE_APPLY, True)):
            if over_valid:
                apply(registry, doc)
            try:
                apply(registry, mutated, mode=mode)
            except BatchError:
                pass
            if registry.store.try_get(cls, namespace, doc["metadata"]["name"]) is not None:
                registry.delete(cls, namespace, doc["metadata"]["name"], 0)


def test_nulls_read_as_kubernetes_reads_them(registry: Registry) -> None:
    (svc,) = apply(registry, service_doc("z", selector={"a": None}, externalIPs=None))
    assert svc.spec.selector == {"a": ""}
    with pytest.raises(BatchError) as exc:
        apply(registry, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "z1"}, "spec": None})
    assert str(exc.value) == 'Service "z1" is invalid: spec.ports: Required value'
    with pytest.raises(BatchError) as exc:
        apply(registry, service_doc("z6", ports=[None]))
    assert str(exc.value) == 'Service "z6" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive'


def test_an_endpointslices_address_type_is_immutable(registry: Registry) -> None:
    """As the apiserver's ValidateEndpointSliceUpdate: a slice's addressType cannot change
    (IPv4 -> FQDN was applied as `configured`)."""
    from controlplane.controllers.batch import BatchError
    doc = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s"},
           "addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [{"addresses": ["10.244.1.5"]}]}
    apply(registry, doc)
    fqdn = {**doc, "addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}]}
    with pytest.raises(BatchError, match='addressType: Invalid value: "FQDN": field is immutable'):
        apply(registry, fqdn)
