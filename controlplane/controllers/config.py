"""Cluster-wide settings the allocators need: the service CIDR and the NodePort range.

Kubeadm defaults: services 10.96.0.0/12 (`kubernetes` at the first address, DNS at .10),
NodePorts 30000-32767. The values are fixed at bootstrap (from the environment variables
SVCXDP_SERVICE_CIDR / SVCXDP_NODE_PORT_RANGE, or an explicit ClusterConfig) and kept in the
store's settings, so every later process allocates from the same ranges.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass

from controlplane.store.interface import StoreWriter

ENV_SERVICE_CIDR = "SVCXDP_SERVICE_CIDR"
ENV_NODE_PORT_RANGE = "SVCXDP_NODE_PORT_RANGE"
SETTING_KEY = "cluster-config"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ClusterConfig:
    service_cidr: str = "10.96.0.0/12"
    node_port_range: str = "30000-32767"

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(self.service_cidr, strict=True)
        except ValueError as exc:
            raise ConfigError(f"invalid service CIDR {self.service_cidr!r}: {exc}") from None
        if net.version != 4:
            raise ConfigError(f"service CIDR {self.service_cidr}: only IPv4 is supported")
        if net.num_addresses < 8:
            raise ConfigError(f"service CIDR {self.service_cidr} must hold at least 8 addresses")
        lo, hi = self.node_port_bounds
        if not (1 <= lo <= hi <= 65535):
            raise ConfigError(f"invalid NodePort range {self.node_port_range!r}")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.service_cidr)

    @property
    def kubernetes_ip(self) -> str:
        """The `default/kubernetes` Service's address: index 1 of the range."""
        return str(self.network[1])

    @property
    def dns_ip(self) -> str:
        """Reserved for the cluster DNS Service (kubeadm: 10.96.0.10)."""
        return str(self.network[10])

    @property
    def node_port_bounds(self) -> tuple[int, int]:
        try:
            lo, _, hi = self.node_port_range.partition("-")
            return int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"invalid NodePort range {self.node_port_range!r}") from None

    @classmethod
    def from_env(cls) -> "ClusterConfig":
        return cls(
            service_cidr=os.environ.get(ENV_SERVICE_CIDR) or cls.service_cidr,
            node_port_range=os.environ.get(ENV_NODE_PORT_RANGE) or cls.node_port_range,
        )


def load_config(store: StoreWriter) -> ClusterConfig | None:
    raw = store.get_setting(SETTING_KEY)
    return ClusterConfig(**json.loads(raw)) if raw else None


def save_config(store: StoreWriter, config: ClusterConfig) -> None:
    store.put_setting(SETTING_KEY, json.dumps(asdict(config)))
