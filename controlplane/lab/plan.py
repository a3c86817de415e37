"""Names and addresses of lab objects: pure functions, no side effects.

Defaults follow kubeadm and the walkthrough: pods 10.244.N.0/24 on node N, services
10.96.0.0/12, node N at 192.168.1.(30+N) on the LAN shared with the `outside` host.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re

PREFIX = "svcxdp"
SERVICE_CIDR = "10.96.0.0/12"
CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
LAN_CIDR = "192.168.1.0/24"
LAN_PREFIXLEN = 24
OUTSIDE_IP = "192.168.1.100"
# LoadBalancer IPs (LB-IPAM's pool in a lab's store): a small range on the outside link that
# the outside host routes to the nodes, one ECMP route over every node.
LB_POOL = "192.168.1.240/28"
# The lab nodes' own resolv.conf (what dnsPolicy: Default gives a pod): the outside host's
# resolver, so nothing in the lab ever asks a server outside it.
NODE_RESOLV_CONF = f"nameserver {OUTSIDE_IP}\n"
NODE_IP_BASE = 30  # node N is 192.168.1.(30+N), node1 = .31 as in the walkthrough
# etcd member M (`lab up --store etcd`) is 192.168.1.(20+M) on the same LAN, in its own namespace.
ETCD_IP_BASE = 20
MAX_ETCD_MEMBERS = 7
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
MAX_NODES = 60  # keeps node addresses below the outside host's .100

BRIDGE_IFNAME = "svcxdp-br0"  # in the outside namespace: the nodes' LAN
NODE_EXT_IFNAME = "eth0"  # a node's external interface, inside its namespace
POD_IFNAME = "eth0"  # a pod's interface, inside its namespace
IFNAMSIZ = 15  # usable characters of a Linux interface name

# Fixed MACs where a permanent neighbour entry must survive re-creation (locally administered).
BRIDGE_MAC = "02:5c:78:ff:00:01"

_NODE_RE = re.compile(r"^node(\d+)$")
_NETNS_SAFE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_NETNS_MAX = 64  # ours, to keep names readable; the kernel allows 255


def check_prefix(prefix: str) -> str:
    """Every name the lab creates starts with `svcxdp`; a prefix must keep it that way."""
    if not re.fullmatch(r"svcxdp(-[a-z0-9]+)*", prefix):
        raise ValueError(f"lab prefix must be 'svcxdp' or 'svcxdp-<word>', not {prefix!r}")
    return prefix


def node_name(index: int) -> str:
    return f"node{index}"


def node_index(name: str) -> int | None:
    m = _NODE_RE.match(name)
    return int(m.group(1)) if m else None


def node_netns(prefix: str, index: int) -> str:
    return f"{prefix}-node{index}"


def node_cgroup(prefix: str, index: int) -> str:
    """The cgroup (under the cgroup2 mount) of the processes the lab runs on node N: node
    shells, `svcctl exec nodeN`, hostNetwork pods. The agent's socket hooks attach to it."""
    return f"{prefix}-node{index}"


def pods_cgroup(prefix: str, index: int) -> str:
    """The cgroup of node N's pod processes: under the socket hooks only when the agent
    is told to attach there too (`--socket-lb-cgroup`); else pods use the XDP path."""
    return f"{prefix}-node{index}-pods"


def etcd_member_name(index: int) -> str:
    return f"etcd{index}"


def etcd_netns(prefix: str, index: int) -> str:
    return f"{prefix}-etcd{index}"


def etcd_ip(index: int) -> str:
    return str(ipaddress.ip_network(LAN_CIDR)[ETCD_IP_BASE + index])


def etcd_mac(index: int) -> str:
    return f"02:5c:78:e0:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"


def etcd_uplink_peer(index: int) -> str:
    """The outside-namespace end of etcd member M's eth0 veth (a bridge port)."""
    return f"svcxdp-e{index}"


def outside_netns(prefix: str) -> str:
    return f"{prefix}-outside"


def pod_netns(prefix: str, pod: str) -> str:
    """`<prefix>-pod-<pod>`, or a shortened, hashed form when the pod name is long or odd."""
    name = f"{prefix}-pod-{pod}"
    if len(name) <= _NETNS_MAX and _NETNS_SAFE.match(pod):
        return name
    digest = hashlib.sha1(pod.encode()).hexdigest()[:10]
    keep = re.sub(r"[^a-z0-9-]", "-", pod.lower())[: _NETNS_MAX - len(prefix) - 17].strip("-")
    return f"{prefix}-pod-{keep}-{digest}" if keep else f"{prefix}-pod-{digest}"


def node_uplink_peer(index: int) -> str:
    """The outside-namespace end of node N's eth0 veth (a bridge port)."""
    return f"svcxdp-n{index}"


def pod_host_ifname(pod: str) -> str:
    """Node-side end of a pod's veth: `vp` + 11 hex of the pod name's SHA-1 (Calico's scheme)."""
    return "vp" + hashlib.sha1(pod.encode()).hexdigest()[:11]


def node_ip(index: int) -> str:
    return str(ipaddress.ip_network(LAN_CIDR)[NODE_IP_BASE + index])


def node_mac(index: int) -> str:
    return f"02:5c:78:00:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"


def pod_cidr(index: int) -> str:
    return f"10.244.{index}.0/24"


def pod_gateway(index: int) -> str:
    """The node's address towards its pods, put on every node-side pod veth as a /32."""
    return f"10.244.{index}.1"


def pod_ip(index: int, host: int) -> str:
    return f"10.244.{index}.{host}"


POD_HOST_FIRST = 2
POD_HOST_LAST = 254


def fits(name: str) -> bool:
    return 0 < len(name) <= IFNAMSIZ
