"""The consistency check's dataplane half (verify.py, issue 14 item 9): maps edited
behind the writer's back are found by a fresh adoption and repaired by the owner;
lc connection counts are recounted from conntrack."""
from __future__ import annotations

import ctypes as ct
from array import array
import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane.libbpf import map_fd_by_id, u32_array_write
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.writer import MapWriter

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness

pytestmark = pytest.mark.root

FE = Frontend(VIP, 80)


def state(alg="random", ips=BACKENDS, m=None) -> ServiceState:
    return ServiceState(FE, tuple(Backend(ip, 8080) for ip in ips), alg, 0, m)


def syn(sport: int, flags="S"):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags=flags)


def slot_key(xdp: Harness, svc_id: int, slot: int):
    k = xdp.dp.table("slots").Key()
    k.svc_id, k.slot = svc_id, slot
    return k


def check_repaired(xdp: Harness, expect: str) -> None:
    """A fresh adoption finds the damage; the owner repairs it; the next adoption
    finds nothing, and the service serves only its own backends."""
    fresh = MapWriter(xdp.dp)
    assert fresh.adoption_drift >= 1
    assert any(expect in line for line in fresh.drift_report()), fresh.drift_report()
    fresh.repair_adopted()
    again = MapWriter(xdp.dp)
    assert again.adoption_drift == 0, again.drift_report()
    for sport in range(41000, 41030):
        out = xdp.send(syn(sport))
        assert out.verdict == "XDP_PASS" and out.pkt[IP].dst in BACKENDS


def test_a_wrong_slot_is_found_and_rewritten(xdp: Harness):
    svc_id = xdp.writer.upsert(state())
    slots = xdp.dp.table("slots")
    slots[slot_key(xdp, svc_id, 2)] = slots.Leaf(xdp.writer.backend_id(FE, BACKENDS[0], 8080))
    check_repaired(xdp, "slots")
    assert [slots[slot_key(xdp, svc_id, i)].value for i in (1, 2, 3)] == \
        [xdp.writer.backend_id(FE, ip, 8080) for ip in BACKENDS]


def test_a_slot_beyond_the_count_is_deleted(xdp: Harness):
    svc_id = xdp.writer.upsert(state())
    slots = xdp.dp.table("slots")
    slots[slot_key(xdp, svc_id, 7)] = slots.Leaf(1)
    check_repaired(xdp, "slots beyond the count")
    with pytest.raises(KeyError):
        slots[slot_key(xdp, svc_id, 7)]


def test_a_damaged_maglev_table_is_found_and_swapped(xdp: Harness):
    svc_id = xdp.writer.upsert(state("maglev", m=251))
    table = xdp.writer.maglev_table(FE)
    other = next(x for x in table if x != table[0])
    damaged = [other] * 50 + list(table[50:])   # table[0] is now under-represented
    fd = map_fd_by_id(xdp.writer.maglev._inner_id(svc_id))
    try:
        u32_array_write(fd, array("I", damaged))
    finally:
        os.close(fd)
    assert xdp.writer.maglev_table(FE) != table
    check_repaired(xdp, "Maglev table")
    assert xdp.writer.maglev_table(FE) == table


def test_a_wrong_service_entry_is_found_and_rewritten(xdp: Harness):
    xdp.writer.upsert(state())
    services = xdp.dp.table("services")
    key = xdp.writer._svc_key(FE)
    v = services[key]
    v.count = 2          # the third backend would never be chosen
    services[key] = v
    check_repaired(xdp, "service entry")
    assert services[key].count == 3


def test_entries_of_no_service_are_removed(xdp: Harness):
    xdp.writer.upsert(state("maglev", m=251))
    gone = xdp.writer.svc_id(FE)
    # as if the last agent died in delete() after the service entry went
    del xdp.dp.table("services")[xdp.writer._svc_key(FE)]
    fresh = MapWriter(xdp.dp)
    report = "\n".join(fresh.drift_report())
    assert "slots of no service" in report and "Maglev tables of no service" in report
    assert "backend entries of no service" in report
    fresh.repair_adopted()
    assert MapWriter(xdp.dp).adoption_drift == 0
    assert gone not in fresh.maglev.svc_ids()
    assert not [k for k in xdp.dp.table("slots").keys() if k.svc_id == gone]
    xdp.writer = fresh


def test_an_intact_dataplane_has_no_drift(xdp: Harness):
    xdp.writer.upsert_many([state("maglev", m=251),
                            ServiceState(Frontend("10.96.0.101", 80), (Backend(BACKENDS[0], 8080),), "wrr")])
    assert MapWriter(xdp.dp).adoption_drift == 0


def test_adoption_makes_its_records_in_service_id_order(xdp: Harness):
    """Not in the services hash map's order: the ids were handed out in the source's
    order, so the adopted records are made in it, each beside its backends (made in id
    order too); walked in hash order, a restart at 10,000 services misses the caches."""
    states = [ServiceState(Frontend(f"10.96.1.{i}", 80), (Backend(BACKENDS[i % len(BACKENDS)], 8080),))
              for i in range(1, 33)]
    xdp.writer.upsert_many(states)
    ids = [record.svc_id for record in MapWriter(xdp.dp).records().values()]
    assert len(ids) == len(states) and ids == sorted(ids)


def test_lc_counts_are_recounted_from_conntrack(xdp: Harness):
    xdp.writer.upsert(state("lc"))
    for sport in range(42000, 42009):
        assert xdp.send(syn(sport)).verdict == "XDP_PASS"
    assert sum(xdp.writer.active_connections(FE).values()) == 9
    assert xdp.writer.recount_connections() == 0      # exact: nothing to correct
    # The LRU evicts four flows: nothing gives their counts back. (New flows wait
    # in ct_unconfirmed_pod until their second packet; some are confirmed here.)
    for sport in range(42000, 42004):
        assert xdp.send(syn(sport, "A")).verdict == "XDP_PASS"
    assert xdp.writer.recount_connections() == 0
    evicted = 0
    for name in ("conntrack", "ct_unconfirmed_pod"):
        table = xdp.dp.table(name)
        for k in list(table.keys()):
            if evicted < 4 and k.dir == 0 and name == ("conntrack" if evicted < 2 else "ct_unconfirmed_pod"):
                del table[k]
                evicted += 1
    assert evicted == 4
    assert sum(xdp.writer.active_connections(FE).values()) == 9
    fixed = xdp.writer.recount_connections()
    assert fixed >= 1
    assert sum(xdp.writer.active_connections(FE).values()) == 5
    # a count gone below the truth (two CPUs closing one flow) is raised again
    conns = xdp.dp.table("backend_conns")
    bid = xdp.writer.backend_id(FE, BACKENDS[0], 8080)
    truth = xdp.writer.active_connections(FE)[(BACKENDS[0], 8080)]
    conns[conns.Key(bid)] = ct.c_uint32(0xFFFFFFFF)   # -1
    xdp.writer.recount_connections()
    assert xdp.writer.active_connections(FE)[(BACKENDS[0], 8080)] == truth
