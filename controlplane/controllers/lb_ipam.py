"""LB-IPAM: LoadBalancer ingress IPs from a pool, as Cilium's LB-IPAM and MetalLB do.

For every Service of type LoadBalancer whose `spec.loadBalancerClass` is unset or ours
(LB_CLASS), the controller holds one address of the pool (controllers.lb_pool) and writes it
to `status.loadBalancer.ingress[0].ip` (ipMode VIP, as the apiserver defaults it):

- `spec.loadBalancerIP` is honoured when it lies in the pool and is free; otherwise the
  service stays without an address and a condition says why;
- otherwise the service keeps the address it holds, or adopts the one its status already
  names (if in the pool and free), or gets the lowest free one;
- an exhausted pool leaves the service pending (`<pending>` in `get svc`); it is recorded in
  a pending set and served, oldest first, as soon as an address frees;
- deleting the service, changing its type or its class, or shrinking the pool releases the
  address (and clears the status, except for another class's service: not ours to touch).

Addresses are store claims (pool POOL_LB_IPS, owner "namespace/name"), so two controllers
can never hand out one address twice: a claim is a row with a unique key, and everything a
sync does (claims, releases, the status write) happens in the caller's store transaction,
all of it or none. The condition `svcxdp.io/IPAMRequestSatisfied` records the outcome.
"""
from __future__ import annotations

from dataclasses import dataclass

from controlplane.api.meta import format_timestamp, now
from controlplane.api.service import (IP_MODE_VIP, LOAD_BALANCER, LoadBalancerIngress, LoadBalancerStatus, Service,
                                      ServiceCondition)
from controlplane.store.interface import Store, StoreWriter

from .events import NORMAL, WARNING, emit
from .lb_pool import Pool, load_pool

POOL_LB_IPS = "loadbalancerips"
POOL_LB_PENDING = "loadbalancerips-pending"    # value = owner = "namespace/name"
LB_CLASS = "svcxdp.io/lb-ipam"
CONDITION_TYPE = "svcxdp.io/IPAMRequestSatisfied"


def wants_address(svc: Service) -> bool:
    cls = svc.spec.load_balancer_class
    return svc.type == LOAD_BALANCER and (cls is None or cls == LB_CLASS)


@dataclass(frozen=True)
class Outcome:
    ip: str | None
    reason: str
    message: str


class LBIPAM:
    """One transaction's view of the pool and its claims (cached for the transaction)."""

    def __init__(self, tx: StoreWriter, pool: Pool | None = None) -> None:
        self.tx = tx
        self.pool = pool if pool is not None else load_pool(tx)
        self._claims: dict[str, str] | None = None
        self._by_owner: dict[str, set[str]] = {}
        self._free_from = 0  # pool addresses before this index are all taken (lowest-first scans)
        self._addresses: list[str] | None = None
        self.freed = False   # an address was released: pending services may fit now

    # ---------------------------------------------------------------- claims
    @property
    def claims(self) -> dict[str, str]:
        if self._claims is None:
            self._claims = self.tx.claims(POOL_LB_IPS)
            for ip, owner in self._claims.items():
                self._by_owner.setdefault(owner, set()).add(ip)
        return self._claims

    def held_by(self, key: str) -> list[str]:
        self.claims  # noqa: B018 (loads the index)
        return sorted(self._by_owner.get(key, ()))

    def _claim(self, ip: str, key: str) -> bool:
        if not self.tx.claim(POOL_LB_IPS, ip, key):
            return False
        self.claims[ip] = key
        self._by_owner.setdefault(key, set()).add(ip)
        return True

    def _release(self, ip: str) -> None:
        self.tx.release(POOL_LB_IPS, ip)
        owner = self.claims.pop(ip, None)
        self._by_owner.get(owner or "", set()).discard(ip)
        self._free_from = 0
        self.freed = True

    def _claim_lowest_free(self, key: str) -> str | None:
        """The lowest free address of the pool; the scan resumes where the last one stopped,
        so allocating for many services in one transaction reads the pool once."""
        if self._addresses is None:
            self._addresses = list(self.pool.addresses())
        taken = self.claims
        while self._free_from < len(self._addresses):
            ip = self._addresses[self._free_from]
            if ip not in taken and self._claim(ip, key):
                return ip
            self._free_from += 1
        return None

    # ---------------------------------------------------------------- one service
    def sync(self, namespace: str, name: str) -> int:
        """Bring one service's address and status in line; returns the number of writes."""
        key = f"{namespace}/{name}"
        svc = self.tx.try_get(Service, namespace, name)
        held = self.held_by(key)
        if svc is None or not wants_address(svc):
            for ip in held:
                self._release(ip)
            self.tx.release(POOL_LB_PENDING, key)
            if svc is not None and svc.type != LOAD_BALANCER:
                return self._write_status(svc, None)
            return 0
        outcome = self._choose(svc, key, held)
        for ip in held:
            if ip != outcome.ip:
                self._release(ip)
        if outcome.ip is None:
            self.tx.claim(POOL_LB_PENDING, key, key)
        else:
            self.tx.release(POOL_LB_PENDING, key)
        return self._write_status(svc, outcome)

    def _choose(self, svc: Service, key: str, held: list[str]) -> Outcome:
        pool = self.pool
        requested = svc.spec.load_balancer_ip
        if requested:
            if requested not in pool:
                return Outcome(None, "OutOfPool", f"spec.loadBalancerIP {requested} is not in the pool ({pool})")
            if requested in held or self._claim(requested, key):
                return Outcome(requested, "Allocated", f"spec.loadBalancerIP {requested} allocated")
            return Outcome(None, "AlreadyAllocated",
                           f"spec.loadBalancerIP {requested} is already allocated to {self.claims.get(requested)}")
        for ip in held:
            if ip in pool:
                return Outcome(ip, "Allocated", f"{ip} allocated from the pool")
        for ip in svc.load_balancer_ips:        # adopt an address the status already names
            if ip in pool and (self.claims.get(ip) == key or self._claim(ip, key)):
                return Outcome(ip, "Allocated", f"{ip} allocated from the pool")
        ip = self._claim_lowest_free(key)
        if ip is not None:
            return Outcome(ip, "Allocated", f"{ip} allocated from the pool")
        if not pool.blocks:
            return Outcome(None, "NoPool", "no LoadBalancer IP pool is configured (svcctl lb-pool set)")
        return Outcome(None, "PoolExhausted", f"every address of the pool ({pool}) is allocated")

    def _write_status(self, svc: Service, outcome: Outcome | None) -> int:
        status = svc.status
        want_ingress = [LoadBalancerIngress(ip=outcome.ip, ip_mode=IP_MODE_VIP)] if outcome and outcome.ip else None
        have_ingress = status.load_balancer.ingress if status.load_balancer else None
        conditions = [c for c in status.conditions or [] if c.type != CONDITION_TYPE]
        old = next((c for c in status.conditions or [] if c.type == CONDITION_TYPE), None)
        if outcome is not None:
            state = "True" if outcome.ip else "False"
            unchanged = old is not None and (old.status, old.reason, old.message) == (state, outcome.reason, outcome.message)
            if not unchanged:   # MetalLB's controller records its outcome as an event too
                emit(svc, NORMAL if outcome.ip else WARNING, outcome.reason, outcome.message, "lb-ipam")
            conditions.append(old if unchanged else ServiceCondition(
                type=CONDITION_TYPE, status=state, reason=outcome.reason, message=outcome.message,
                last_transition_time=old.last_transition_time if old is not None and old.status == state
                else format_timestamp(now())))
        new_conditions = conditions or None
        if have_ingress == want_ingress and (status.conditions or None) == new_conditions:
            return 0
        status.load_balancer = LoadBalancerStatus(ingress=want_ingress) if want_ingress else None
        status.conditions = new_conditions
        self.tx.update(svc)
        return 1

    # ---------------------------------------------------------------- many services
    def retry_pending(self) -> int:
        """Offer freed addresses to pending services, oldest service first."""
        pending = list(self.tx.claims(POOL_LB_PENDING))
        if not pending or not self.freed:
            return 0
        self.freed = False

        def age(key: str) -> tuple[str, str]:
            namespace, _, name = key.partition("/")
            svc = self.tx.try_get(Service, namespace, name)
            return ((svc.metadata.creation_timestamp or "") if svc else "", key)

        writes = 0
        for key in sorted(pending, key=age):
            namespace, _, name = key.partition("/")
            writes += self.sync(namespace, name)
        return writes

    def sync_all(self) -> int:
        """Every service and every claim: release what no service wants (deleted services,
        addresses outside a changed pool), then (re)assign."""
        writes = 0
        for ip, owner in list(self.claims.items()):
            namespace, _, name = owner.partition("/")
            svc = self.tx.try_get(Service, namespace, name)
            if svc is None or not wants_address(svc) or ip not in self.pool:
                self._release(ip)
        for key in list(self.tx.claims(POOL_LB_PENDING)):
            namespace, _, name = key.partition("/")
            if self.tx.try_get(Service, namespace, name) is None:
                self.tx.release(POOL_LB_PENDING, key)
        services = sorted(self.tx.list(Service), key=lambda s: (s.metadata.creation_timestamp or "", s.key))
        for svc in services:
            if wants_address(svc) or svc.load_balancer_ips:
                writes += self.sync(svc.namespace, svc.name)
        return writes


def sync_services(tx: StoreWriter, keys: set[tuple[str, str]]) -> int:
    """The incremental controller: the dirty services, then pending ones if an address freed."""
    if not keys:
        return 0
    ipam = LBIPAM(tx)
    writes = sum(ipam.sync(namespace, name) for namespace, name in sorted(keys))
    return writes + ipam.retry_pending()


def reconcile_lb_ipam(store: Store) -> int:
    """The full pass (controllers.manager.CONTROLLERS; inside reconcile's transaction)."""
    with store.transaction() as tx:
        return LBIPAM(tx).sync_all()
