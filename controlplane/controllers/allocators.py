"""ClusterIP and NodePort allocators, backed by the store's claims.

Both are created per transaction (they cache the pool's claims for the transaction's life):

    with store.transaction() as tx:
        ips = ClusterIPAllocator(tx, config); ports = NodePortAllocator(tx, config)
        ip = ips.allocate("default/nginx")

Failures are api.field_errors.FieldError values (the registry turns them into the
`The Service "x" is invalid: ...` error), or RangeFull.
"""
from __future__ import annotations

import ipaddress
import random

from controlplane.api.errors import ApiError
from controlplane.api.field_errors import FieldError, invalid
from controlplane.store.interface import StoreWriter

from .bands import pick_free, static_band_size
from .config import ClusterConfig

POOL_SERVICE_IPS = "serviceips"
POOL_NODE_PORTS = "servicenodeports"


class RangeFull(ApiError):
    reason = "InternalError"


class _PoolAllocator:
    pool = ""

    def __init__(self, store: StoreWriter, size: int, static_size: int, rng: random.Random | None) -> None:
        self.store = store
        self.size = size
        self.static_size = static_size
        self.rng = rng or random.Random()
        self._taken: set[int] | None = None

    # offsets <-> stored values, per pool
    def _value(self, offset: int) -> str:
        raise NotImplementedError

    def _offset(self, value: str) -> int | None:
        raise NotImplementedError

    def taken(self) -> set[int]:
        if self._taken is None:
            offsets = (self._offset(v) for v in self.store.claims(self.pool))
            self._taken = {o for o in offsets if o is not None}
        return self._taken

    def _claim_offset(self, offset: int, owner: str) -> bool:
        if not self.store.claim(self.pool, self._value(offset), owner):
            return False
        self.taken().add(offset)
        return True

    def _allocate_offset(self, owner: str, skip: set[int] = frozenset()) -> int | None:  # type: ignore[assignment]
        taken = self.taken()
        offset = pick_free(self.size, self.static_size, lambda o: o in taken or o in skip, self.rng)
        if offset is None or not self._claim_offset(offset, owner):
            return None
        return offset

    def release(self, value: str) -> None:
        offset = self._offset(value)
        self.store.release(self.pool, value)
        if offset is not None and self._taken is not None:
            self._taken.discard(offset)

    def owner(self, value: str) -> str | None:
        return self.store.claim_owner(self.pool, value)


class ClusterIPAllocator(_PoolAllocator):
    pool = POOL_SERVICE_IPS

    def __init__(self, store: StoreWriter, config: ClusterConfig, rng: random.Random | None = None) -> None:
        self.network = config.network
        self.base = int(self.network.network_address) + 1       # the network address is never used
        size = self.network.num_addresses - 2                    # ... nor the broadcast address
        super().__init__(store, size, static_band_size(size, 16, 256), rng)
        self.reserved = {self._offset(config.dns_ip)}

    def _value(self, offset: int) -> str:
        return str(ipaddress.IPv4Address(self.base + offset))

    def _offset(self, value: str) -> int | None:
        try:
            offset = int(ipaddress.ip_address(value)) - self.base
        except ValueError:
            return None
        return offset if 0 <= offset < self.size else None

    def allocate(self, owner: str) -> str:
        offset = self._allocate_offset(owner, skip=self.reserved)  # type: ignore[arg-type]
        if offset is None:
            raise RangeFull("Internal error occurred: failed to allocate a serviceIP: range is full")
        return self._value(offset)

    def allocate_specific(self, ip: str, owner: str, field: str = "spec.clusterIP") -> FieldError | None:
        offset = self._offset(ip)
        if offset is None:
            return invalid(field, ip, "provided IP is not in the valid range. "
                                      f"The range of valid IPs is {self.network}")
        if not self._claim_offset(offset, owner):
            return invalid(field, ip, "provided IP is already allocated")
        return None


class NodePortAllocator(_PoolAllocator):
    pool = POOL_NODE_PORTS

    def __init__(self, store: StoreWriter, config: ClusterConfig, rng: random.Random | None = None) -> None:
        self.lo, self.hi = config.node_port_bounds
        size = self.hi - self.lo + 1
        super().__init__(store, size, static_band_size(size, 32, 128), rng)

    def _value(self, offset: int) -> str:
        return str(self.lo + offset)

    def _offset(self, value: str) -> int | None:
        try:
            offset = int(value) - self.lo
        except ValueError:
            return None
        return offset if 0 <= offset < self.size else None

    def allocate(self, owner: str) -> int:
        offset = self._allocate_offset(owner)
        if offset is None:
            raise RangeFull("Internal error occurred: failed to allocate a nodePort: range is full")
        return self.lo + offset

    def allocate_specific(self, port: int, owner: str, field: str) -> FieldError | None:
        offset = self._offset(str(port))
        if offset is None:
            return invalid(field, port, "provided port is not in the valid range. "
                                        f"The range of valid ports is {self.lo}-{self.hi}")
        if not self._claim_offset(offset, owner):
            return invalid(field, port, "provided port is already allocated")
        return None
