"""The NodePort bench's topology: a client and two nodes on one LAN, the backend on node 2.

    client (cl0 192.168.50.100) ─┐
    node1  (eth0 192.168.50.31) ─┼─ bridge br0 in the lan namespace
    node2  (eth0 192.168.50.32) ─┘     (port veths p-cl, p-n1, p-n2)

- node1 serves the NodePorts: the XDP external entry point on its eth0 (chain "x") or
  kube-proxy's iptables rules (chain "i"). Every backend address (10.244.0.0/14) lives on
  node2 (`local ... dev lo`, one namespace owns them all), routed via 192.168.50.32: a
  packet for a backend leaves node1 by the interface it came in on, source-NATed to
  192.168.50.31 — XDP_TX in chain x, the kernel's forwarding + MASQUERADE in chain i.
- node2's eth0 carries the counting sink (UDP to port 8080, counted and dropped).
- Every bridge port has a pass-through XDP program: native XDP on veth delivers XDP_TX
  frames only to a peer that has one. Permanent neighbours everywhere (no ARP); ICMP
  redirects off on node1 (the kernel would send one for every hairpinned packet);
  checksum offload off on every veth end.

Namespaces are `svcxdp-bench-np<tag>-*`, created and removed by exact name (netlab.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from netlab import PREFIX, _check, delete_ns, in_ns, sh

CLIENT_IP, NODE1_IP, NODE2_IP = "192.168.50.100", "192.168.50.31", "192.168.50.32"
CLIENT_MAC, NODE1_MAC, NODE2_MAC = "02:be:00:00:05:64", "02:be:00:00:05:1f", "02:be:00:00:05:20"
CLIENT_SOURCES = "10.128.0.0/10"    # new flows draw their client address from here
BACKEND_RANGE = "10.244.0.0/14"


def _role(suffix: str) -> property:
    """A host of the topology: its namespace, named by the topology's tag and `suffix`."""
    return property(lambda self: self.ns(suffix), doc=f"the namespace {PREFIX}np<tag>-{suffix}")


@dataclass
class NodePortTopology:
    tag: str
    created: list[str] = field(default_factory=list)

    lan = _role("lan")
    client = _role("client")
    node = _role("node1")       # serves the NodePorts
    backend = _role("node2")    # every backend address, and the counting sink

    def ns(self, role: str) -> str:
        return f"{PREFIX}np{self.tag}-{role}"

    def up(self) -> "NodePortTopology":
        for ns in self.namespaces():
            sh("ip", "netns", "add", _check(ns))
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            in_ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        lan = self.lan
        sh("ip", "-n", lan, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", lan, "link", "set", "br0", "up")
        hosts = ((self.client, "cl0", "p-cl", CLIENT_IP, CLIENT_MAC),
                 (self.node, "eth0", "p-n1", NODE1_IP, NODE1_MAC),
                 (self.backend, "eth0", "p-n2", NODE2_IP, NODE2_MAC))
        from controlplane.lab.offload import disable_tx_checksum
        for ns, dev, port, ip, mac in hosts:
            sh("ip", "-n", lan, "link", "add", port, "type", "veth", "peer", "name", dev,
               "address", mac, "netns", ns)
            sh("ip", "-n", lan, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            for other_ip, other_mac in ((h[3], h[4]) for h in hosts if h[0] != ns):
                sh("ip", "-n", ns, "neigh", "replace", other_ip, "lladdr", other_mac, "dev", dev,
                   "nud", "permanent")
            disable_tx_checksum(ns, dev)
            disable_tx_checksum(lan, port)
        in_ns(self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
              "net.ipv4.conf.eth0.send_redirects=0", "net.ipv4.conf.eth0.rp_filter=0")
        sh("ip", "-n", self.node, "route", "add", BACKEND_RANGE, "via", NODE2_IP)
        sh("ip", "-n", self.node, "route", "add", CLIENT_SOURCES, "via", CLIENT_IP)
        sh("ip", "-n", self.backend, "route", "add", "local", BACKEND_RANGE, "dev", "lo")
        return self

    def down(self) -> None:
        for ns in reversed(self.created):
            delete_ns(ns)
        self.created.clear()

    def namespaces(self) -> list[str]:
        return [self.lan, self.client, self.node, self.backend]
