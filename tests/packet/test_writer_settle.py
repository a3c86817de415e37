"""MapWriter.settle: a restarted agent's adopted records take the agent's own objects.

Adoption rebuilds every record from the maps, so a restarted agent held two copies of
each service (the adopted one and its desired one) and of each backend address string;
settle, given the states the agent found the maps hold, makes the records, their
backend ids and rev_nat's users refer to the agent's objects. It writes nothing and
must change nothing the writer decides with: the same ids, users, sharing and flags,
so the next change is written exactly as by the writer that made the maps.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane.layout import const
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.writer import MapWriter

from .harness import CLIENT, CLIENT_MAC, NODE_MAC, Harness

F_REPLY_ENTRY = const("BACKEND_F_REPLY_ENTRY")
VIP_A, VIP_B, VIP_C = "10.96.0.10", "10.96.0.11", "10.96.0.12"
PODS_A = ("10.244.2.50", "10.244.2.51")
PODS_C = ("10.244.3.60", "10.244.3.61", "10.244.3.62")


def fresh(ip: str) -> str:
    """An address string equal to `ip` but another object, as the agent's are."""
    return "".join(list(ip))


def write_services(h: Harness, shared: bool) -> list[ServiceState]:
    """A with two pods; B with the first of them (shared) or a pod of its own; C with three."""
    b_pods = PODS_A[:1] if shared else ("10.244.4.70",)
    states = [ServiceState(Frontend(vip, 80, "TCP"), tuple(Backend(fresh(ip), 8080) for ip in pods))
              for vip, pods in ((VIP_A, PODS_A), (VIP_B, b_pods), (VIP_C, PODS_C))]
    h.writer.upsert_many(states)
    return states


def agents_copy(states: list[ServiceState]) -> list[ServiceState]:
    """Equal states made of other objects (a restarted agent's desired states)."""
    return [ServiceState(Frontend(s.frontend.vip, s.frontend.port, s.frontend.protocol),
                         tuple(Backend(fresh(b.ip), b.port, b.state, b.weight) for b in s.backends),
                         s.algorithm) for s in states]


def reply_flag(h: Harness, w: MapWriter, fe: Frontend, ip: str) -> bool:
    table = h.dp.table("backends")
    return bool(table[table.Key(w.backend_id(fe, ip, 8080))].flags & F_REPLY_ENTRY)


def rev_nat(h: Harness) -> dict:
    t = h.dp.table("rev_nat")
    return {bytes(k): bytes(v) for k, v in t.items()}


@pytest.mark.parametrize("shared", [False, True], ids=["no-address-shared", "an-address-shared"])
def test_settled_records_hold_the_callers_objects_and_nothing_else_changes(xdp: Harness, shared: bool):
    written = write_services(xdp, shared)
    w = MapWriter(xdp.dp)                       # a restart: every record adopted
    assert w.unsettled == 3
    assert w.repair_adopted() == 0
    ids_before = {fe: dict(rec.backend_ids) for fe, rec in w.records().items()}
    users_before = dict(w.revnat.users)
    sharing_before = w.revnat.shared_count
    entries_before = rev_nat(xdp)
    mine = agents_copy(written)

    assert w.settle(mine) == 3
    assert w.unsettled == 0
    for state in mine:
        rec = w.records()[state.frontend]
        assert rec.state is state and not rec.adopted
        key = next(k for k in w.records() if k == state.frontend)
        assert key is state.frontend              # the dict is keyed by the caller's frontend
        assert rec.backend_ids == ids_before[state.frontend]
        for (ip, _), b in zip(rec.backend_ids, state.backends):
            assert ip is b.ip                     # the caller's strings, not adoption's
    assert w.revnat.users == users_before and w.revnat.shared_count == sharing_before
    callers_ips = {id(b.ip) for s in mine for b in s.backends}
    for (ip, port, proto), users in w.revnat.users.items():
        assert all(any(fe is s.frontend for s in mine) for fe in users)   # the caller's frontends
        assert id(ip) in callers_ips               # one of the caller's strings of this address
    assert rev_nat(xdp) == entries_before          # nothing written
    assert w.settle(mine) == 0                     # once


def test_a_settled_writer_writes_the_next_changes_as_the_one_that_made_the_maps(xdp: Harness):
    written = write_services(xdp, shared=True)
    w = MapWriter(xdp.dp)
    w.repair_adopted()
    mine = agents_copy(written)
    w.settle(mine)
    a, b, c = (s.frontend for s in mine)
    assert reply_flag(xdp, w, a, PODS_A[0]) and reply_flag(xdp, w, b, PODS_A[0])

    w.delete(b)                                    # the shared address is A's alone again
    assert not reply_flag(xdp, w, a, PODS_A[0])
    w.upsert(ServiceState(c, mine[2].backends[1:]))   # C loses a pod
    assert w.installed()[c].backends == mine[2].backends[1:]
    assert w.backend_id(c, PODS_C[0], 8080) is None

    out = xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP_A) / TCP(sport=46000, dport=80, flags="S"))
    pod = out.pkt[IP].dst
    assert pod in PODS_A
    reply = Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=pod, dst=CLIENT) / TCP(sport=8080, dport=46000, flags="SA")
    assert xdp.send(reply).pkt[IP].src == VIP_A
    rows = rev_nat(xdp)
    assert len(rows) == len(PODS_A) + len(PODS_C) - 1   # B's and C's lost pod's entries gone
    assert MapWriter(xdp.dp).adoption_drift == 0   # what a next restart finds: consistent


def test_records_rewritten_before_settling_are_left_as_written(xdp: Harness):
    written = write_services(xdp, shared=False)
    w = MapWriter(xdp.dp)
    w.repair_adopted()
    mine = agents_copy(written)
    changed = ServiceState(mine[2].frontend, mine[2].backends[:1])
    w.upsert(changed)                              # C rewritten: its record is the writer's own
    assert w.settle(mine[:2]) == 2
    assert w.records()[changed.frontend].state is changed
    assert w.unsettled == 0


def test_a_state_that_is_not_the_records_leaves_it_adopted(xdp: Harness):
    written = write_services(xdp, shared=False)
    w = MapWriter(xdp.dp)
    w.repair_adopted()
    mine = agents_copy(written)
    other = ServiceState(mine[2].frontend, mine[2].backends[:1])   # a caller's mistake
    assert w.settle([*mine[:2], other]) == 2
    rec = w.records()[other.frontend]
    assert rec.adopted and rec.state == written[2]
    assert w.unsettled == 1


def test_adopted_records_hold_the_ids_the_maps_give_each_address(xdp: Harness):
    """Adoption reads each service's backends in id order. Ids handed out in address
    order (a sync) are kept as read; a backend added later with an address sorting first
    takes a higher id, and the record then looks every id up by address."""
    a = ServiceState(Frontend(VIP_A, 80, "TCP"), tuple(Backend(ip, 8080) for ip in PODS_A))
    xdp.writer.upsert(a)
    grown = ServiceState(a.frontend, (Backend("10.244.1.5", 8080),) + a.backends)   # sorts first
    xdp.writer.upsert(grown)
    made = {fe: dict(rec.backend_ids) for fe, rec in xdp.writer.records().items()}
    assert made[a.frontend][("10.244.1.5", 8080)] > made[a.frontend][(PODS_A[0], 8080)]
    adopted = MapWriter(xdp.dp).records()
    assert {fe: dict(rec.backend_ids) for fe, rec in adopted.items()} == made
    rec = adopted[a.frontend]
    assert [rec.backend_ids[b.address] for b in rec.state.backends] == [made[a.frontend][b.address]
                                                                         for b in grown.backends]
