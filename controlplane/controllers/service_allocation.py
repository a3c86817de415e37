"""Allocating and releasing a Service's clusterIP, nodePorts and healthCheckNodePort inside a
store transaction (what the apiserver's service REST storage does on create/update/delete)."""
from __future__ import annotations

from controlplane.api.field_errors import FieldError
from controlplane.api.service import HEADLESS, Service
from controlplane.api.service_update import (allocates_node_ports, needs_cluster_ip, needs_health_check_node_port,
                                             needs_node_ports)
from controlplane.store.interface import StoreWriter

from .allocators import ClusterIPAllocator, NodePortAllocator, RangeFull
from .config import ClusterConfig
from .events import NORMAL, emit


class ServiceAllocations:
    """Per-transaction allocator pair. `allocate(svc, old)` fills in missing values on `svc`
    and claims/releases the difference from `old`; it returns field errors for conflicts."""

    def __init__(self, tx: StoreWriter, config: ClusterConfig) -> None:
        self.tx = tx
        self.config = config
        self._ips: ClusterIPAllocator | None = None
        self._ports: NodePortAllocator | None = None

    @property
    def ips(self) -> ClusterIPAllocator:
        if self._ips is None:
            self._ips = ClusterIPAllocator(self.tx, self.config)
        return self._ips

    @property
    def ports(self) -> NodePortAllocator:
        if self._ports is None:
            self._ports = NodePortAllocator(self.tx, self.config)
        return self._ports

    @staticmethod
    def _claimed_ip(svc: Service | None) -> str | None:
        if svc is None or not needs_cluster_ip(svc):
            return None
        ip = svc.spec.cluster_ip
        return ip if ip and ip != HEADLESS else None

    @staticmethod
    def _claimed_ports(svc: Service | None) -> set[int]:
        if svc is None:
            return set()
        ports = set(svc.node_ports) if needs_node_ports(svc) else set()
        if needs_health_check_node_port(svc) and svc.spec.health_check_node_port:
            ports.add(svc.spec.health_check_node_port)
        return ports

    def allocate(self, svc: Service, old: Service | None = None) -> list[FieldError]:
        errs: list[FieldError] = []
        owner = svc.key
        old_ip = self._claimed_ip(old)
        if needs_cluster_ip(svc):
            ip = svc.spec.cluster_ip
            if not ip:
                svc.spec.cluster_ip = self.ips.allocate(owner)
            elif ip != HEADLESS and ip != old_ip:
                err = self.ips.allocate_specific(ip, owner)
                if err:
                    errs.append(err)
            svc.spec.cluster_ips = [svc.spec.cluster_ip] if svc.spec.cluster_ip else None
        old_ports = self._claimed_ports(old)
        held: set[int] = set()
        if needs_node_ports(svc):
            by_number: dict[int, int] = {}
            for i, port in enumerate(svc.ports):
                if not port.node_port:
                    continue
                if port.node_port not in old_ports and port.node_port not in held:
                    err = self.ports.allocate_specific(port.node_port, owner, f"spec.ports[{i}].nodePort")
                    if err:
                        errs.append(err)
                        continue
                held.add(port.node_port)
                by_number.setdefault(port.port or 0, port.node_port)
            for port in svc.ports if allocates_node_ports(svc) else ():
                if port.node_port:
                    continue
                shared = by_number.get(port.port or 0)
                if shared is None:
                    shared = by_number[port.port or 0] = self.ports.allocate(owner)
                    held.add(shared)
                port.node_port = shared
        if needs_health_check_node_port(svc):
            hc = svc.spec.health_check_node_port
            if not hc:
                svc.spec.health_check_node_port = hc = self._allocate_health_check_port(owner)
            elif hc in held and not _held_both_ways(old, hc):
                # one of its own nodePorts: claimed first, from the same range (a service
                # stored so before this check may keep it)
                raise _health_check_port_taken(hc, "provided port is already allocated")
            elif hc not in old_ports:
                err = self.ports.allocate_specific(hc, owner, "spec.healthCheckNodePort")
                if err:
                    raise _health_check_port_taken(hc, err.detail)
            held.add(hc)
        if errs:
            return errs
        self._announce(svc, old, old_ip, old_ports)
        new_ip = self._claimed_ip(svc)
        if old_ip and old_ip != new_ip:
            self.ips.release(old_ip)
        for port in old_ports - held:
            self.ports.release(str(port))
        return []

    def _announce(self, svc: Service, old: Service | None, old_ip: str | None, old_ports: set[int]) -> None:
        """Events for what this allocation gave the service (written once it commits)."""
        ip = self._claimed_ip(svc)
        if ip and ip != old_ip:
            emit(svc, NORMAL, "ClusterIPAllocated", f"Allocated ClusterIP {ip}", "ipallocator")
        if needs_node_ports(svc):
            for port in svc.ports:
                if port.node_port and port.node_port not in old_ports:
                    emit(svc, NORMAL, "NodePortAllocated",
                         f"Allocated NodePort {port.node_port} for port {port.port}/{port.protocol}", "portallocator")
        hc = svc.spec.health_check_node_port if needs_health_check_node_port(svc) else None
        if hc and hc not in old_ports:
            emit(svc, NORMAL, "NodePortAllocated", f"Allocated healthCheckNodePort {hc}", "portallocator")

    def _allocate_health_check_port(self, owner: str) -> int:
        try:
            return self.ports.allocate(owner)
        except RangeFull:
            raise RangeFull("Internal error occurred: failed to allocate a HealthCheck NodePort 0: "
                            "range is full") from None

    def release(self, svc: Service) -> None:
        ip = self._claimed_ip(svc)
        if ip and self.ips.owner(ip) == svc.key:
            self.ips.release(ip)
        for port in self._claimed_ports(svc):
            if self.ports.owner(str(port)) == svc.key:
                self.ports.release(str(port))


def _held_both_ways(old: Service | None, port: int) -> bool:
    """`old` held `port` as its healthCheckNodePort and as a nodePort at once."""
    return (old is not None and needs_health_check_node_port(old) and old.spec.health_check_node_port == port
            and port in old.node_ports)


def _health_check_port_taken(hc: int, detail: str) -> RangeFull:
    """The apiserver reports a requested healthCheckNodePort it cannot have as an internal
    error, not a field error."""
    return RangeFull(f"Internal error occurred: failed to allocate requested HealthCheck NodePort {hc}: {detail}")
