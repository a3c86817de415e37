"""Which node addresses answer on NodePorts, as kube-proxy's --nodeport-addresses: the
IPv4 addresses of the node's external interfaces, only those inside the given CIDRs
when any are given. A nodePort on any other address is left to the node's stack."""
from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

from controlplane.dataplane.attach import open_ipr


def parse_cidrs(text: str) -> tuple[str, ...]:
    """`--nodeport-addresses 192.168.1.0/24,10.0.0.0/8` -> normalized CIDRs; a clear
    error naming the bad entry."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise ValueError(f"--nodeport-addresses: {item!r} is not an IPv4 CIDR") from None
    return tuple(out)


def select(addresses: Iterable[str], cidrs: Sequence[str]) -> tuple[str, ...]:
    nets = [ipaddress.IPv4Network(c) for c in cidrs]
    return tuple(a for a in addresses
                 if not nets or any(ipaddress.IPv4Address(a) in n for n in nets))


def interface_addresses(ns: str, ifindex: int) -> list[str]:
    """The IPv4 addresses of one interface, in the named network namespace ("" = ours)."""
    with open_ipr(ns or None) as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=ifindex)]
