"""Links, addresses, routes and neighbours inside lab namespaces (pyroute2).

Every veth is created from a lab namespace with its peer placed straight into another lab
namespace, so no lab link ever exists in the root namespace, not even for a moment.
All operations are idempotent: a second `lab up` finds what exists and leaves it alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from controlplane.lab import netns, offload

EEXIST = 17
SCOPE_LINK = 253
PERMANENT = ndmsg.states["permanent"]

# Quiet, predictable namespaces: no IPv6 chatter (RS/MLD/DAD) in packet counts, no
# reverse-path drops of asymmetric or NATed flows, no ICMP redirects from hairpinned traffic.
BASE_SYSCTLS = {
    "net.ipv6.conf.all.disable_ipv6": 1,
    "net.ipv6.conf.default.disable_ipv6": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
}
ROUTER_SYSCTLS = {
    **BASE_SYSCTLS,
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.default.send_redirects": 0,
    # A frame XDP rewrote to carry the node's own address as source that reaches the
    # stack is dropped as a martian without this (the tests that check the way real
    # nodes run turn it off: test_nodeport's handoff tests).
    "net.ipv4.conf.all.accept_local": 1,
    "net.ipv4.conf.default.accept_local": 1,
}


@dataclass(frozen=True)
class LinkInfo:
    ifname: str
    ifindex: int
    mac: str


def prepare(ns: str, router: bool) -> None:
    """Sysctls first (so new links inherit the defaults), then loopback up."""
    netns.sysctl(ns, ROUTER_SYSCTLS if router else BASE_SYSCTLS)
    with netns.iproute(ns) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(ifname)
    return found[0]


def _info(ipr: IPRoute, ifname: str) -> LinkInfo:
    link = ipr.get_links(_index(ipr, ifname))[0]
    return LinkInfo(ifname, link["index"], link.get("address"))


def link_info(ns: str, ifname: str) -> LinkInfo | None:
    with netns.iproute(ns) as ipr:
        return _info(ipr, ifname) if ipr.link_lookup(ifname=ifname) else None


def _addr(ipr: IPRoute, index: int, address: str, prefixlen: int) -> None:
    try:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        if exc.code != EEXIST:
            raise


def make_bridge(ns: str, bridge: str, mac: str, address: str, prefixlen: int) -> LinkInfo:
    """The LAN in the outside namespace; a fixed MAC so neighbour entries stay right."""
    with netns.iproute(ns) as ipr:
        if not ipr.link_lookup(ifname=bridge):
            ipr.link("add", ifname=bridge, kind="bridge", address=mac)
        idx = _index(ipr, bridge)
        _addr(ipr, idx, address, prefixlen)
        ipr.link("set", index=idx, state="up")
        info = _info(ipr, bridge)
    offload.disable_tx_checksum(ns, bridge)
    return info


def make_uplink(
    outside_ns: str, bridge: str, port: str, node_ns: str, ext_ifname: str, mac: str, address: str, prefixlen: int
) -> tuple[LinkInfo, LinkInfo]:
    """veth from the bridge (port `port`) to the node's `ext_ifname`; returns (node end, port end)."""
    with netns.iproute(node_ns) as nipr:
        missing = not nipr.link_lookup(ifname=ext_ifname)
    with netns.iproute(outside_ns) as oipr:
        if missing:
            if oipr.link_lookup(ifname=port):  # half-made by an interrupted run
                oipr.link("del", index=_index(oipr, port))
            oipr.link("add", ifname=port, kind="veth", peer={"ifname": ext_ifname, "net_ns_fd": node_ns})
        pidx = _index(oipr, port)
        oipr.link("set", index=pidx, master=_index(oipr, bridge))
        oipr.link("set", index=pidx, state="up")
        port_info = _info(oipr, port)
    offload.disable_tx_checksum(outside_ns, port)
    with netns.iproute(node_ns) as nipr:
        idx = _index(nipr, ext_ifname)
        if nipr.get_links(idx)[0].get("address") != mac:
            nipr.link("set", index=idx, state="down")
            nipr.link("set", index=idx, address=mac)
        _addr(nipr, idx, address, prefixlen)
        nipr.link("set", index=idx, state="up")
        node_info = _info(nipr, ext_ifname)
    offload.disable_tx_checksum(node_ns, ext_ifname)
    return node_info, port_info


def set_routes(ns: str, routes: dict[str, str]) -> None:
    """dst CIDR -> gateway, replacing whatever route each dst had."""
    with netns.iproute(ns) as ipr:
        for dst, gateway in routes.items():
            ipr.route("replace", dst=dst, gateway=gateway)


def set_multipath_route(ns: str, dst: str, gateways: list[str]) -> None:
    """One route to dst over several gateways (ECMP), hashed per flow on the L4 header
    (fib_multipath_hash_policy 1), so different client ports may take different gateways."""
    netns.sysctl(ns, {"net.ipv4.fib_multipath_hash_policy": 1})
    with netns.iproute(ns) as ipr:
        if len(gateways) == 1:
            ipr.route("replace", dst=dst, gateway=gateways[0])
        else:
            ipr.route("replace", dst=dst, multipath=[{"gateway": g} for g in gateways])


def set_neighbours(ns: str, ifname: str, entries: dict[str, str]) -> None:
    """Permanent ip -> MAC entries: no ARP needed on links an XDP program may sit on."""
    with netns.iproute(ns) as ipr:
        idx = _index(ipr, ifname)
        for ip, mac in entries.items():
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state=PERMANENT)


def delete_link(ns: str, ifname: str) -> bool:
    """Delete a link (a veth takes its peer along) now, rather than when the kernel gets round
    to freeing a deleted namespace, which it does later, in a work queue."""
    if not netns.exists(ns):
        return False
    with netns.iproute(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])
        return bool(found)


def make_pod_link(
    node_ns: str, pod_ns: str, host_ifname: str, pod_ifname: str, gateway: str, pod_ip: str
) -> tuple[LinkInfo, LinkInfo]:
    """Point-to-point veth: node side holds gateway/32 and a /32 route to the pod; the pod holds
    pod_ip/32 and a default route via the gateway. Permanent neighbours on both ends."""
    with netns.iproute(node_ns) as nipr:
        if nipr.link_lookup(ifname=host_ifname):
            nipr.link("del", index=_index(nipr, host_ifname))  # stale from an interrupted add
        nipr.link("add", ifname=host_ifname, kind="veth", peer={"ifname": pod_ifname, "net_ns_fd": pod_ns})
        host = _info(nipr, host_ifname)
    offload.disable_tx_checksum(node_ns, host_ifname)
    offload.disable_tx_checksum(pod_ns, pod_ifname)
    with netns.iproute(pod_ns) as pipr:
        pod = _info(pipr, pod_ifname)
        _addr(pipr, pod.ifindex, pod_ip, 32)
        pipr.link("set", index=pod.ifindex, state="up")
        pipr.neigh("replace", dst=gateway, lladdr=host.mac, ifindex=pod.ifindex, state=PERMANENT)
        pipr.route("replace", dst=f"{gateway}/32", oif=pod.ifindex, scope=SCOPE_LINK)
        pipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=pod.ifindex)
    with netns.iproute(node_ns) as nipr:
        _addr(nipr, host.ifindex, gateway, 32)
        nipr.link("set", index=host.ifindex, state="up")
        nipr.neigh("replace", dst=pod_ip, lladdr=pod.mac, ifindex=host.ifindex, state=PERMANENT)
        nipr.route("replace", dst=f"{pod_ip}/32", oif=host.ifindex, scope=SCOPE_LINK, prefsrc=gateway)
    return host, pod
