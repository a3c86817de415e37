"""Whose is a dataplane frontend: the Service (and port) a (VIP, port, protocol, scope)
entry of a node's maps stands for, and which kind of way in it is — for commands that
show what the dataplane holds (`svcctl trace`, `svcctl get flows`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from controlplane.controllers.service_view import SCOPE_CLUSTER_IP, SCOPE_EXTERNAL_IP, SCOPE_LOAD_BALANCER, ServiceView
from controlplane.dataplane.model import Frontend

KINDS = {SCOPE_CLUSTER_IP: "ClusterIP", SCOPE_EXTERNAL_IP: "externalIP", SCOPE_LOAD_BALANCER: "LoadBalancer IP"}
NODE_PORT = "NodePort"


@dataclass(frozen=True)
class FrontendOwner:
    namespace: str
    service: str
    port: str                  # the service port's name, or its number when it has several unnamed
    kind: str                  # ClusterIP | NodePort | LoadBalancer IP | externalIP
    pods: dict[tuple[str, int], str] = field(default_factory=dict, compare=False)  # (ip, port) -> pod

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.service}" + (f":{self.port}" if self.port else "")


class Owners:
    """Frontends of the services in `views`, by address (ClusterIP, externalIPs, LB IPs)
    and by nodePort (any node address)."""

    def __init__(self, views: list[ServiceView]) -> None:
        self._by_vip: dict[tuple[str, int, str, bool], FrontendOwner] = {}
        self._by_node_port: dict[tuple[int, str], FrontendOwner] = {}
        self._cluster_ips: set[str] = set()
        # Two services naming one address: the one the agent serves it for (the senior)
        by_vip_from: dict[tuple[str, int, str, bool], ServiceView] = {}
        for view in views:
            several = len(view.ports) > 1
            for port in view.ports:
                pods = {(b.ip, b.port): b.pod_name for b in port.backends if b.pod_name}
                name = (port.name or str(port.port)) if several else ""
                ns, svc = view.service.namespace, view.service.name
                for ip, vport, scope in port.frontends:
                    key = (ip, vport, port.protocol, scope == SCOPE_CLUSTER_IP)
                    held = by_vip_from.get(key)
                    if held is None or view.seniority < held.seniority:
                        by_vip_from[key] = view
                        self._by_vip[key] = FrontendOwner(ns, svc, name, KINDS.get(scope, scope), pods)
                    if scope == SCOPE_CLUSTER_IP:
                        self._cluster_ips.add(ip)
                if port.node_port:
                    self._by_node_port[(port.node_port, port.protocol)] = FrontendOwner(ns, svc, name, NODE_PORT, pods)

    def of(self, fe: Frontend) -> FrontendOwner | None:
        """The owner of a frontend; a cluster-scope one at an address that is no
        ClusterIP is the twin (for pods and the node) of a way in from outside there. A
        nodePort is known by its number alone (the node's addresses are not known here),
        so only at an address that is no service's ClusterIP."""
        cluster = fe.scope == "cluster"
        found = self._by_vip.get((fe.vip, fe.port, fe.protocol, cluster))
        if found is None and cluster:
            found = self._by_vip.get((fe.vip, fe.port, fe.protocol, False))
        if found is None and fe.vip not in self._cluster_ips:
            found = self._by_node_port.get((fe.port, fe.protocol))
        return found
