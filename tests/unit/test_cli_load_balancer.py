"""`svcctl` on LoadBalancer services, compared to kubectl's output: get svc's EXTERNAL-IP and
PORT(S), describe svc's LoadBalancer lines, lb-pool, and apply-time errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.api import Service
from controlplane.api.service import LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec
from controlplane.kubectl.printers.columns import service_external_ip, service_ports
from tests.unit.cli_kit import run, state_dir  # noqa: F401 (state_dir: an autouse fixture)

WEB = """apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  loadBalancerSourceRanges: ["192.168.1.0/24", "10.0.0.0/8"]
  externalIPs: ["203.0.113.250"]
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
    nodePort: 30080
"""


def manifest(tmp_path: Path, text: str, name: str = "svc.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def svc_row(capsys: pytest.CaptureFixture, name: str, *flags: str) -> list[str]:
    _, out, _ = run(capsys, "get", "svc", name, *flags)
    return out.splitlines()[1].split()


def test_external_ip_column_as_kubectl() -> None:
    def svc(stype: str, ingress: list[str] = (), external: list[str] | None = None) -> Service:
        s = Service(spec=ServiceSpec(type=stype, external_ips=external, external_name="db.example.com"
                                     if stype == "ExternalName" else None))
        if ingress:
            s.status.load_balancer = LoadBalancerStatus(ingress=[LoadBalancerIngress(ip=i) for i in ingress])
        return s
    assert service_external_ip(svc("ClusterIP")) == "<none>"
    assert service_external_ip(svc("ClusterIP", external=["203.0.113.250"])) == "203.0.113.250"
    assert service_external_ip(svc("NodePort")) == "<none>"
    assert service_external_ip(svc("LoadBalancer")) == "<pending>"
    assert service_external_ip(svc("LoadBalancer", external=["203.0.113.250"])) == "203.0.113.250"
    assert service_external_ip(svc("LoadBalancer", ["192.168.1.241"], ["203.0.113.250"])) == "192.168.1.241,203.0.113.250"
    # sorted, without repeats, clipped to 16 characters unless -o wide (loadBalancerStatusStringer)
    two = svc("LoadBalancer", ["192.168.1.242", "192.168.1.241", "192.168.1.242"])
    assert service_external_ip(two) == "192.168.1.241..."
    assert service_external_ip(two, wide=True) == "192.168.1.241,192.168.1.242"
    assert service_external_ip(svc("ExternalName")) == "db.example.com"
    ports = Service(spec=ServiceSpec(ports=[ServicePort(port=80, protocol="TCP", node_port=30080),
                                            ServicePort(port=53, protocol="UDP")]))
    assert service_ports(ports) == "80:30080/TCP,53/UDP"


def test_get_and_describe_a_load_balancer(capsys, tmp_path, state_dir) -> None:
    assert run(capsys, "lb-pool", "set", "192.168.1.240/30")[0] == 0
    code, out, err = run(capsys, "apply", "-f", manifest(tmp_path, WEB))
    assert (code, out, err) == (0, "service/web created\n", "")
    row = svc_row(capsys, "web")
    assert row[:5] == ["web", "LoadBalancer", row[2], "192.168.1.241,203.0.113.250", "80:30080/TCP"]
    _, out, _ = run(capsys, "describe", "svc", "web")
    hc = re.search(r"^HealthCheck NodePort:\s+(\d+)$", out, re.M).group(1)
    ip = re.search(r"^IP:\s+(\S+)$", out, re.M).group(1)
    lines = out.splitlines()
    events = [re.split(r"  +", line.strip()) for line in lines[lines.index("Events:") + 3:]]
    assert [e[:2] + e[3:] for e in events] == [     # Type, Reason, (Age), From, Message; oldest first
        ["Normal", "ClusterIPAllocated", "ipallocator", f"Allocated ClusterIP {ip}"],
        ["Normal", "NodePortAllocated", "portallocator", "Allocated NodePort 30080 for port 80/TCP"],
        ["Normal", "NodePortAllocated", "portallocator", f"Allocated healthCheckNodePort {hc}"],
        ["Normal", "Allocated", "lb-ipam", "192.168.1.241 allocated from the pool"]], out
    assert lines[lines.index("Events:") + 1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert lines[:lines.index("Events:") + 1] == [
        "Name:                        web",
        "Namespace:                   default",
        "Labels:                      <none>",
        "Annotations:                 <none>",
        "Selector:                    app=web",
        "Type:                        LoadBalancer",
        "IP Family Policy:            SingleStack",
        "IP Families:                 IPv4",
        f"IP:                          {ip}",
        f"IPs:                         {ip}",
        "External IPs:                203.0.113.250",
        "LoadBalancer Ingress:        192.168.1.241 (VIP)",
        "Port:                        http  80/TCP",
        "TargetPort:                  8080/TCP",
        "NodePort:                    http  30080/TCP",
        "Endpoints:                   <none>",
        "Session Affinity:            None",
        "External Traffic Policy:     Local",
        "Internal Traffic Policy:     Cluster",
        f"HealthCheck NodePort:        {hc}",
        "LoadBalancer Source Ranges:  192.168.1.0/24,10.0.0.0/8",
        "Events:",
    ]


def test_pending_then_assigned_and_lb_pool_show(capsys, tmp_path) -> None:
    run(capsys, "lb-pool", "set", "192.168.1.241/32")
    for name in ("a", "b"):
        run(capsys, "apply", "-f", manifest(tmp_path, WEB.replace("name: web", f"name: {name}")
                                            .replace("    nodePort: 30080\n", "")
                                            .replace('  externalIPs: ["203.0.113.250"]\n', ""), f"{name}.yaml"))
    assert svc_row(capsys, "a")[3] == "192.168.1.241"
    assert svc_row(capsys, "b")[3] == "<pending>"
    _, out, _ = run(capsys, "describe", "svc", "b")    # why, where kubectl shows a controller's events
    assert re.search(r"^  Warning  PoolExhausted +\S+ +lb-ipam +every address of the pool \(192.168.1.241/32\) "
                     r"is allocated$", out, re.M), out
    _, out, _ = run(capsys, "lb-pool")
    assert out.splitlines() == [
        "Pool:      192.168.1.241/32",
        "Addresses: 1 (1 allocated, 0 free)",
        "ADDRESS         SERVICE",
        "192.168.1.241   default/a",
        "<pending>       default/b",
    ]
    assert run(capsys, "delete", "svc", "a")[0] == 0
    assert svc_row(capsys, "b")[3] == "192.168.1.241"
    run(capsys, "lb-pool", "set", "192.168.1.250-192.168.1.251")   # the pool moves: so does b
    assert svc_row(capsys, "b")[3] == "192.168.1.250"


def test_invalid_source_range_is_rejected_and_nothing_is_applied(capsys, tmp_path) -> None:
    path = manifest(tmp_path, WEB.replace('"10.0.0.0/8"', '"10.0.0.1"') + "---\n" +
                    WEB.replace("name: web", "name: other").replace("30080", "30081"))
    code, out, err = run(capsys, "apply", "-f", path)
    assert code == 1 and out == ""
    assert err.strip() == (
        f'The Service "web" is invalid: spec.LoadBalancerSourceRanges[1]: Invalid value: "10.0.0.1": '
        "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")
    _, out, err = run(capsys, "get", "svc")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["kubernetes"]


def test_health_check_node_port_conflict_reads_like_kubectl(capsys, tmp_path) -> None:
    run(capsys, "apply", "-f", manifest(tmp_path, WEB.replace("  selector:", "  healthCheckNodePort: 30999\n  selector:")))
    path = manifest(tmp_path, WEB.replace("name: web", "name: other").replace("30080", "30081")
                    .replace("  selector:", "  healthCheckNodePort: 30999\n  selector:"), "other.yaml")
    code, _, err = run(capsys, "apply", "-f", path)
    assert code == 1
    assert err.strip() == (f'Error from server (InternalError): error when creating "{path}": Internal error occurred: '
                           "failed to allocate requested HealthCheck NodePort 30999: provided port is already allocated")


def test_lb_pool_rejects_bad_input(capsys, tmp_path) -> None:
    assert run(capsys, "lb-pool", "set")[0] == 1
    code, _, err = run(capsys, "lb-pool", "set", "192.168.1.241/28")
    assert code == 1 and err.startswith("error: invalid pool: 192.168.1.241/28: not a CIDR")
    path = manifest(tmp_path, "blocks:\n- cidr: 10.0.0.0/30\n- start: 10.0.1.1\n  stop: 10.0.1.3\n", "pool.yaml")
    assert run(capsys, "lb-pool", "set", "-f", path)[1] == "lb-pool set: 10.0.0.0/30,10.0.1.1-10.0.1.3 (5 addresses)\n"
