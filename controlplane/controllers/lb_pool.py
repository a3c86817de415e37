"""The LoadBalancer IP pool: which addresses LB-IPAM (controllers.lb_ipam) may hand out.

A pool is a list of blocks, as in Cilium's CiliumLoadBalancerIPPool: a CIDR, or a start/stop
range. Like Cilium's default (`allowFirstLastIPs: No`), a CIDR of /30 or wider gives neither
its network nor its broadcast address. It is kept in the store's settings, so every process
that runs the controllers allocates from the same pool; `svcctl lb-pool set` changes it.

A config file is YAML (or JSON) with the blocks, either bare or as a Cilium pool manifest:

    blocks:                           # or: kind: CiliumLoadBalancerIPPool / spec: {blocks: ...}
    - cidr: 192.168.1.240/28
    - start: 192.168.1.250
      stop: 192.168.1.252
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from controlplane.store.interface import StoreWriter

SETTING_KEY = "lb-ipam-pool"


class PoolError(ValueError):
    pass


@dataclass(frozen=True)
class Block:
    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    text: str            # as given: "192.168.1.240/28" or "192.168.1.250-192.168.1.252"

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, ip: ipaddress.IPv4Address) -> bool:
        return self.first <= ip <= self.last


def _address(value: Any, where: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise PoolError(f"{where}: {value!r} is not an IP address") from None
    if ip.version != 4:
        raise PoolError(f"{where}: {value}: only IPv4 is supported")
    return ip  # type: ignore[return-value]


def parse_block(text: str) -> Block:
    """`a.b.c.d/n` or `a.b.c.d-e.f.g.h`."""
    text = text.strip()
    if "-" in text:
        start, _, stop = text.partition("-")
        first, last = _address(start, text), _address(stop, text)
        if last < first:
            raise PoolError(f"{text}: the range ends before it starts")
        return Block(first, last, text)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise PoolError(f"{text}: not a CIDR ({exc})") from None
    if net.version != 4:
        raise PoolError(f"{text}: only IPv4 is supported")
    if net.prefixlen <= 30:   # skip the network and broadcast addresses
        return Block(net[1], net[-2], text)  # type: ignore[arg-type]
    return Block(net[0], net[-1], text)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pool:
    blocks: tuple[Block, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> "Pool":
        blocks = tuple(parse_block(e) for e in entries)
        for i, a in enumerate(blocks):
            for b in blocks[i + 1:]:
                if a.first <= b.last and b.first <= a.last:
                    raise PoolError(f"{a.text} and {b.text} overlap")
        return cls(blocks)

    @property
    def entries(self) -> list[str]:
        return [b.text for b in self.blocks]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blocks)

    def __contains__(self, value: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(value)
        except ValueError:
            return False
        return any(ip in b for b in self.blocks)

    def addresses(self) -> Iterator[str]:
        """Every address, lowest first within each block, blocks in the order given."""
        for b in self.blocks:
            for n in range(int(b.first), int(b.last) + 1):
                yield str(ipaddress.IPv4Address(n))

    def __str__(self) -> str:
        return ",".join(self.entries) or "<empty>"


def pool_from_document(doc: Any, source: str = "-") -> Pool:
    """The blocks of a config file's document (bare, or a CiliumLoadBalancerIPPool)."""
    if isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
        doc = doc["spec"]
    blocks = doc.get("blocks") if isinstance(doc, dict) else None
    if not isinstance(blocks, list):
        raise PoolError(f"{source}: expected a list under `blocks` (or `spec.blocks`)")
    entries: list[str] = []
    for i, block in enumerate(blocks):
        if isinstance(block, dict) and block.get("cidr"):
            entries.append(str(block["cidr"]))
        elif isinstance(block, dict) and block.get("start"):
            entries.append(f"{block['start']}-{block.get('stop') or block['start']}")
        else:
            raise PoolError(f"{source}: blocks[{i}]: needs `cidr` or `start` (and `stop`)")
    try:
        return Pool.parse(entries)
    except PoolError as exc:
        raise PoolError(f"{source}: {exc}") from None


def read_pool_file(path: str | Path) -> Pool:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PoolError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PoolError(f"{path}: not YAML: {exc}") from None
    return pool_from_document(doc, str(path))


def load_pool(store: StoreWriter) -> Pool:
    raw = store.get_setting(SETTING_KEY)
    return Pool.parse(json.loads(raw)) if raw else Pool()


def save_pool(store: StoreWriter, pool: Pool) -> None:
    store.put_setting(SETTING_KEY, json.dumps(pool.entries))


def pool_is_set(store: StoreWriter) -> bool:
    return store.get_setting(SETTING_KEY) is not None
