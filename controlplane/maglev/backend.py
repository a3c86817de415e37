"""The backend as Maglev sees it: a stable key, the id the table stores, a weight."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

U32_MAX = 0xFFFFFFFF
EMPTY = 0  # table entry for "no backend"; backend id 0 is reserved for it


def addr_key(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bytes:
    """Canonical key of ip:port: packed address (4 or 16 bytes) + big-endian port.

    Every node derives the same bytes from the same endpoint, whatever its
    node-local backend ids are, so every node orders and places it alike.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range 0..65535")
    return ipaddress.ip_address(ip).packed + port.to_bytes(2, "big")


@dataclass(frozen=True)
class MaglevBackend:
    """One backend of one service.

    key: stable identity, bytes or an (ip, port) pair (turned into addr_key()).
    backend_id: what the table stores, 1..2^32-1 (0 means empty).
    weight: relative share, 0..2^32-1; 0 leaves the backend out of the table.
    """

    key: bytes
    backend_id: int
    weight: int = 1

    def __post_init__(self) -> None:
        key = self.key
        if isinstance(key, tuple):
            key = addr_key(*key)
        elif isinstance(key, (bytearray, memoryview)):
            key = bytes(key)
        if not isinstance(key, bytes):
            raise TypeError(f"backend key must be bytes or (ip, port), not {type(self.key).__name__}")
        object.__setattr__(self, "key", key)
        if not 1 <= self.backend_id <= U32_MAX:
            raise ValueError(f"backend_id {self.backend_id} out of range 1..{U32_MAX} (0 is reserved for empty)")
        if not 0 <= self.weight <= U32_MAX:
            raise ValueError(f"weight {self.weight} out of range 0..{U32_MAX}")


def active_sorted(backends: list[MaglevBackend] | tuple[MaglevBackend, ...]) -> list[MaglevBackend]:
    """Backends with weight > 0 ordered by key bytes; duplicate keys are an error."""
    active = sorted((b for b in backends if b.weight > 0), key=lambda b: b.key)
    for prev, cur in zip(active, active[1:]):
        if prev.key == cur.key:
            raise ValueError(f"duplicate backend key {cur.key.hex()} (ids {prev.backend_id} and {cur.backend_id})")
    return active
