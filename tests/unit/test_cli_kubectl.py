"""svcctl's kubectl-shaped commands, end to end over a temporary store."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import yaml

from controlplane.api import Pod
from controlplane.controllers.runtime import set_pod_status
from controlplane.store import open_store
from tests.unit.cli_kit import run, state_dir  # noqa: F401 (state_dir: an autouse fixture)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"


def start_pods(state_dir: Path, prefix: str = "10.244.1.") -> list[str]:
    store = open_store(state_dir)
    names = []
    for i, pod in enumerate(sorted(store.list(Pod), key=lambda p: p.name)):
        set_pod_status(store, pod.namespace, pod.name, node_name="node1", pod_ip=f"{prefix}{i + 2}",
                       phase="Running", ready=True)
        names.append(pod.name)
    store.close()
    return names


def test_walkthrough_manifests_apply_as_written(capsys, state_dir) -> None:
    code, out, err = run(capsys, "apply", "-f", str(FIXTURES))
    assert code == 0, err
    assert out.splitlines() == [
        "deployment.apps/httpd created", "service/httpd-headless created",
        "deployment.apps/myapp-deploy created", "service/myapp created",
        "service/nginx-nodeport created",
        "deployment.apps/nginx created", "service/nginx created",
        "deployment.apps/redis created", "service/redis created"]
    code, out, _ = run(capsys, "apply", "-f", str(FIXTURES / "myapp.yaml"))
    assert out.splitlines() == ["deployment.apps/myapp-deploy unchanged", "service/myapp unchanged"]
    code, out, _ = run(capsys, "get", "svc")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["kubernetes"][:5] == ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    assert rows["nginx-nodeport"][1] == "NodePort" and rows["nginx-nodeport"][4] == "80:30080/TCP"
    assert rows["httpd-headless"][2] == "None"
    assert rows["redis"][2:5] == ["10.97.97.97", "<none>", "6379/TCP"]
    # columns are aligned like kubectl's tabwriter: each starts where its header starts
    col = lines[0].index("TYPE")
    assert all(line[col - 3:col] == "   " and line[col] != " " for line in lines)


def test_endpoints_follow_pods(capsys, state_dir) -> None:
    run(capsys, "apply", "-f", str(FIXTURES / "myapp.yaml"))
    start_pods(state_dir)
    code, out, _ = run(capsys, "get", "endpoints", "myapp")
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["myapp", "10.244.1.2:80,10.244.1.3:80,10.244.1.4:80"]
    run(capsys, "scale", "deployment", "myapp-deploy", "--replicas", "4")
    start_pods(state_dir, "10.244.2.")
    _, out, _ = run(capsys, "get", "ep", "myapp")
    assert re.search(r":80,.*:80 \+ 1 more\.\.\.", out)
    _, out, _ = run(capsys, "get", "endpointslices", "-l", "kubernetes.io/service-name=myapp")
    assert out.splitlines()[1].split()[1:4] == ["IPv4", "80", "10.244.2.2,10.244.2.3,10.244.2.4"]


def test_headless_named_port_endpoints(capsys, state_dir) -> None:
    run(capsys, "apply", "-f", str(FIXTURES / "httpd-headless.yaml"))
    start_pods(state_dir)
    _, out, _ = run(capsys, "get", "ep", "httpd-headless", "-o", "json")
    ep = json.loads(out)
    assert [a["ip"] for a in ep["subsets"][0]["addresses"]] == ["10.244.1.2", "10.244.1.3"]
    assert ep["subsets"][0]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]


def test_invalid_document_applies_nothing(capsys) -> None:
    code, out, err = run(capsys, "apply", "-f", str(FIXTURES / "invalid" / "affinity-timeout-zero.yaml"))
    assert code == 1 and out == ""
    assert err.strip() == ('The Service "sticky" is invalid: spec.sessionAffinityConfig.clientIP.timeoutSeconds: '
                           "Invalid value: 0: must be greater than 0 and less than 86400")
    code, _, err = run(capsys, "get", "svc", "good")
    assert code == 1 and err.strip() == 'Error from server (NotFound): services "good" not found'


def test_several_field_errors_are_listed(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  type: NodePort\n"
                   "  clusterIP: None\n  ports: [{port: 0}]\n")
    code, _, err = run(capsys, "apply", "-f", str(bad))
    assert code == 1
    assert err.splitlines()[0] == 'The Service "x" is invalid: '
    assert "* spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive" in err.splitlines()
    assert "* spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for NodePort services" in err.splitlines()


def test_unknown_kind_and_missing_file(capsys) -> None:
    code, _, err = run(capsys, "apply", "-f", str(FIXTURES / "invalid" / "unknown-kind.yaml"))
    assert code == 1
    assert err.splitlines() == [
        f'error: resource mapping not found for name: "gizmo" namespace: "" from '
        f'"{FIXTURES / "invalid" / "unknown-kind.yaml"}": no matches for kind "Widget" in version "example.com/v1"',
        "ensure CRDs are installed first"]
    code, _, err = run(capsys, "apply", "-f", "/nonexistent.yaml")
    assert code == 1 and err.strip() == 'error: the path "/nonexistent.yaml" does not exist'


def test_create_twice_is_already_exists(capsys) -> None:
    path = str(FIXTURES / "nginx-nodeport.yaml")
    assert run(capsys, "create", "-f", path)[1] == "service/nginx-nodeport created\n"
    code, _, err = run(capsys, "create", "-f", path)
    assert code == 1
    assert err.strip() == (f'Error from server (AlreadyExists): error when creating "{path}": '
                           'services "nginx-nodeport" already exists')


def test_run_expose_describe(capsys, state_dir) -> None:
    assert run(capsys, "run", "nginx", "--image=nginx", "--replicas=3")[1] == "deployment.apps/nginx created\n"
    assert run(capsys, "expose", "deployment", "nginx", "--port=80", "--type=NodePort")[1] == "service/nginx exposed\n"
    start_pods(state_dir)
    code, out, _ = run(capsys, "describe", "svc", "nginx")
    assert code == 0
    ip = re.search(r"^IP:\s+(\S+)$", out, re.M).group(1)
    node_port = re.search(r"^NodePort:\s+<unset>  (\d+)/TCP$", out, re.M).group(1)
    age = re.search(r"^  Normal  ClusterIPAllocated  (\S+)", out, re.M).group(1)
    assert re.fullmatch(r"\d+s", age) and len(age) == 2, out   # one column width below
    assert out.splitlines() == [
        "Name:                     nginx",
        "Namespace:                default",
        "Labels:                   run=nginx",
        "Annotations:              <none>",
        "Selector:                 run=nginx",
        "Type:                     NodePort",
        "IP Family Policy:         SingleStack",
        "IP Families:              IPv4",
        f"IP:                       {ip}",
        f"IPs:                      {ip}",
        "Port:                     <unset>  80/TCP",
        "TargetPort:               80/TCP",
        f"NodePort:                 <unset>  {node_port}/TCP",
        "Endpoints:                10.244.1.2:80,10.244.1.3:80,10.244.1.4:80",
        "Session Affinity:         None",
        "External Traffic Policy:  Cluster",
        "Internal Traffic Policy:  Cluster",
        "Events:",
        "  Type    Reason              Age   From           Message",
        "  ----    ------              ----  ----           -------",
        f"  Normal  ClusterIPAllocated  {age:<4}  ipallocator    Allocated ClusterIP {ip}",
        f"  Normal  NodePortAllocated   {age:<4}  portallocator  Allocated NodePort {node_port} for port 80/TCP",
    ]
    _, out, _ = run(capsys, "get", "deploy", "nginx")
    assert out.splitlines()[1].split()[:4] == ["nginx", "3/3", "3", "3"]
    # scaled to zero: the endpoints controller warns that connections are now refused
    run(capsys, "scale", "deployment", "nginx", "--replicas=0")
    _, out, _ = run(capsys, "describe", "svc", "nginx")
    assert re.search(r"^  Warning  NoReadyEndpoints    \S+ +endpoint-controller  Endpoints empty: none of the "
                     r"service's 3 ready endpoints is left; new connections are refused", out, re.M), out
    code, out, _ = run(capsys, "get", "events", "--field-selector", "type=Warning")
    assert code == 0 and [line.split()[1:4] for line in out.splitlines()] == [
        ["SEEN", "TYPE", "REASON"], ["Warning", "NoReadyEndpoints", "service/nginx"]], out


def test_output_formats(capsys) -> None:
    run(capsys, "apply", "-f", str(FIXTURES / "redis.yaml"))
    _, out, _ = run(capsys, "get", "svc", "redis", "-o", "json")
    svc = json.loads(out)
    assert svc["kind"] == "Service" and svc["spec"]["clusterIP"] == "10.97.97.97"
    assert svc["metadata"]["resourceVersion"] and svc["metadata"]["uid"]
    _, out, _ = run(capsys, "get", "svc", "redis", "-o", "yaml")
    assert re.search(r'^  resourceVersion: "\d+"$', out, re.M)            # quoted like go-yaml
    assert "last-applied-configuration: |\n      {" in out                 # block scalar
    assert yaml.safe_load(out)["spec"]["ports"] == [{"port": 6379, "protocol": "TCP", "targetPort": 6379}]
    _, out, _ = run(capsys, "get", "svc", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "List" and {i["metadata"]["name"] for i in doc["items"]} == {"kubernetes", "redis"}
    _, out, _ = run(capsys, "get", "deploy,svc", "-o", "name")
    assert out.splitlines() == ["deployment.apps/redis", "service/kubernetes", "service/redis"]
    _, out, _ = run(capsys, "get", "svc", "-o", "wide")
    assert out.splitlines()[0].split()[-1] == "SELECTOR" and "app=redis,role=logstor" in out


def test_namespaces_selectors_and_empty_results(capsys, tmp_path, state_dir) -> None:
    open_store(state_dir).close()   # an empty store (without one, `get` is an error: test_cli_errors)
    code, _, err = run(capsys, "get", "pods", "-n", "kube-system")
    assert code == 0 and err.strip() == "No resources found in kube-system namespace."
    ns_file = tmp_path / "ns.yaml"
    ns_file.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
                       "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop, labels: {tier: web}}\n"
                       "spec: {selector: {app: cart}, ports: [{port: 80}]}\n")
    assert run(capsys, "apply", "-f", str(ns_file))[0] == 0
    _, out, _ = run(capsys, "get", "svc", "-A", "-l", "tier=web")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"] and lines[1].split()[:2] == ["shop", "cart"]
    assert len(lines) == 2
    code, _, err = run(capsys, "apply", "-f", str(ns_file), "-n", "default")
    assert code == 1 and 'the namespace from the provided object "shop" does not match the namespace "default"' in err
    missing = tmp_path / "missing-ns.yaml"
    missing.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: nope}\nspec: {ports: [{port: 80}]}\n")
    code, _, err = run(capsys, "apply", "-f", str(missing))
    assert err.strip() == f'Error from server (NotFound): error when creating "{missing}": namespaces "nope" not found'


def test_delete(capsys, state_dir) -> None:
    run(capsys, "apply", "-f", str(FIXTURES / "nginx.yaml"))
    code, out, _ = run(capsys, "delete", "svc", "nginx")
    assert (code, out) == (0, 'service "nginx" deleted\n')
    code, _, err = run(capsys, "delete", "svc", "nginx")
    assert code == 1 and err.strip() == 'Error from server (NotFound): services "nginx" not found'
    code, out, _ = run(capsys, "delete", "-f", str(FIXTURES / "nginx.yaml"), "--ignore-not-found")
    assert out == 'deployment.apps "nginx" deleted\n'
    _, _, err = run(capsys, "get", "pods")
    assert err.strip() == "No resources found in default namespace."
    _, out, _ = run(capsys, "get", "ep")
    assert "nginx" not in out


def test_scale_and_flag_errors(capsys) -> None:
    run(capsys, "run", "web", "--image", "nginx")
    assert run(capsys, "scale", "deploy/web", "--replicas=2")[1] == "deployment.apps/web scaled\n"
    _, out, _ = run(capsys, "get", "pods", "-l", "run=web", "-o", "name")
    assert len(out.splitlines()) == 2
    code, _, err = run(capsys, "scale", "deploy", "web")
    assert code == 1 and err.startswith("error: The --replicas=COUNT flag is required")
    code, _, err = run(capsys, "get", "widgets")
    assert code == 1 and err.strip() == 'error: the server doesn\'t have a resource type "widgets"'


def test_run_rm_it_is_handed_to_the_lab_client(capsys, monkeypatch) -> None:
    seen = {}
    fake = types.ModuleType("controlplane.lab.client")
    fake.run_client_pod = lambda args: seen.update(name=args.name, command=args.command, rm=args.rm, tty=args.tty) or 0
    monkeypatch.setitem(sys.modules, "controlplane.lab.client", fake)
    assert run(capsys, "run", "client", "--rm", "-it", "--image", "busybox", "--", "wget", "-qO-", "nginx")[0] == 0
    assert seen == {"name": "client", "command": ["wget", "-qO-", "nginx"], "rm": True, "tty": True}
    monkeypatch.setitem(sys.modules, "controlplane.lab.client", types.ModuleType("controlplane.lab.client"))
    code, _, err = run(capsys, "run", "client", "--rm", "-it", "--", "sh")
    assert code == 1 and err.strip() == "error: run --rm -it needs the lab (svcctl lab up)"


def test_get_by_name_across_all_namespaces_is_refused(capsys) -> None:
    run(capsys, "apply", "-f", str(FIXTURES / "nginx-nodeport.yaml"))
    code, out, err = run(capsys, "get", "svc", "nginx-nodeport", "-A")
    assert code == 1 and out == ""
    assert "a resource cannot be retrieved by name across all namespaces" in err


def test_describe_a_service_without_endpoints_says_none(capsys, tmp_path) -> None:
    """A selector-less service with no Endpoints object at all, as kubectl shows it."""
    doc = tmp_path / "bare.yaml"
    doc.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: bare}\nspec: {ports: [{port: 80}]}\n")
    run(capsys, "apply", "-f", str(doc))
    _, out, _ = run(capsys, "describe", "svc", "bare")
    assert re.search(r"^Endpoints:\s+<none>$", out, re.M), out
