"""Two services selecting the same pod and port: a shared backend address.

Replies carry only the backend's address, so for a shared one each flow also
records a reply entry naming its own VIP. Whether to record one is read from the
backend entry's reply-entry flag, which the writer keeps in step with the sharing
(bpf/conntrack.h, ct_needs_reply_entry; controlplane/dataplane/revnat.py).
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane.config import FLOW_TABLES
from controlplane.dataplane.layout import const
from controlplane.dataplane.model import Frontend
from controlplane.dataplane.writer import MapWriter

from .harness import CLIENT, CLIENT_MAC, NODE_MAC, Harness

pytestmark = pytest.mark.root

POD, POD_PORT = "10.244.2.50", 8080
VIP_A, VIP_B = "10.96.0.10", "10.96.0.11"
F_REPLY_ENTRY = const("BACKEND_F_REPLY_ENTRY")


def syn(vip: str, sport: int):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=vip) / TCP(sport=sport, dport=80, flags="S")


def reply_from_pod(cport: int):
    return Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=POD, dst=CLIENT) / TCP(sport=POD_PORT, dport=cport, flags="SA")


def conntrack_entries(h: Harness) -> int:
    return sum(len(list(h.dp.table(name).keys())) for name in FLOW_TABLES)


def backend_entry(h: Harness, fe: Frontend):
    table = h.dp.table("backends")
    return table, table.Key(h.writer.backend_id(fe, POD, POD_PORT))


def reply_flag(h: Harness, fe: Frontend) -> bool:
    table, key = backend_entry(h, fe)
    return bool(table[key].flags & F_REPLY_ENTRY)


def clear_reply_flag(h: Harness, fe: Frontend) -> None:
    table, key = backend_entry(h, fe)
    entry = table[key]
    entry.flags = 0
    table[key] = entry


def assert_reply_goes_to(h: Harness, cport: int, vip: str) -> None:
    out = h.send(reply_from_pod(cport))
    assert (out.pkt[IP].src, out.pkt[TCP].sport) == (vip, 80), out.pkt.summary()


def test_each_reply_returns_from_the_vip_its_flow_used(xdp: Harness):
    a = xdp.service(vip=VIP_A, backends=(POD,))
    assert not reply_flag(xdp, a)
    xdp.send(syn(VIP_A, 41000))
    assert conntrack_entries(xdp) == 1          # alone: the forward entry is enough

    b = xdp.service(vip=VIP_B, backends=(POD,))
    assert reply_flag(xdp, a) and reply_flag(xdp, b)   # both entries of the address
    xdp.send(syn(VIP_B, 41001))
    xdp.send(syn(VIP_A, 41002))
    assert conntrack_entries(xdp) == 5          # + forward and reply entry each
    for cport, vip in ((41000, VIP_A), (41001, VIP_B), (41002, VIP_A)):
        assert_reply_goes_to(xdp, cport, vip)   # 41000 predates the sharing

    xdp.writer.delete(b)
    assert not reply_flag(xdp, a)               # alone again
    xdp.send(syn(VIP_A, 41003))
    assert conntrack_entries(xdp) == 6
    assert_reply_goes_to(xdp, 41003, VIP_A)


def test_sharing_ends_when_the_first_service_leaves(xdp: Harness):
    a = xdp.service(vip=VIP_A, backends=(POD,))
    b = xdp.service(vip=VIP_B, backends=(POD,))
    xdp.writer.delete(a)
    assert not reply_flag(xdp, b)
    xdp.send(syn(VIP_B, 42000))
    assert_reply_goes_to(xdp, 42000, VIP_B)     # rev_nat now names B


def test_a_flow_made_before_its_flag_is_rewritten_is_still_answered(xdp: Harness):
    """The writer sets the flag of the first service's entry after the second one
    makes the address shared; a flow made in between has no reply entry and is
    matched through its forward entry, since rev_nat names that first service."""
    a = xdp.service(vip=VIP_A, backends=(POD,))
    xdp.service(vip=VIP_B, backends=(POD,))
    clear_reply_flag(xdp, a)
    before = conntrack_entries(xdp)
    xdp.send(syn(VIP_A, 43000))
    assert conntrack_entries(xdp) == before + 1
    assert_reply_goes_to(xdp, 43000, VIP_A)


def test_adopting_writer_finds_a_wrong_flag_and_only_repair_writes_it(xdp: Harness):
    """An agent stopped between rev_nat and the backend entries' flags."""
    xdp.service(vip=VIP_A, backends=(POD,))
    b = xdp.service(vip=VIP_B, backends=(POD,))
    clear_reply_flag(xdp, b)
    adopted = MapWriter(xdp.dp)
    assert adopted.adoption_drift == 1
    assert not reply_flag(xdp, b)               # adopting alone never writes
    assert adopted.repair_adopted() == 1
    assert reply_flag(xdp, b) and adopted.adoption_drift == 0
    xdp.send(syn(VIP_B, 44000))
    assert_reply_goes_to(xdp, 44000, VIP_B)


def test_adopting_mid_update_never_deletes_the_agents_rev_nat_entry(xdp: Harness):
    """A read-only command (svcctl dataplane stats) adopting the maps while the agent
    has written a new service's rev_nat entry but not yet its service entry sees that
    entry as unused. It must leave it alone."""
    fe = xdp.service(vip=VIP_A, backends=(POD,))
    services = xdp.dp.table("services")
    key = xdp.writer._svc_key(fe)
    entry = services[key]
    del services[key]                           # as if not written yet
    reader = MapWriter(xdp.dp)
    assert reader.revnat.pending == 1           # it would delete the rev_nat entry ...
    assert len(list(xdp.dp.table("rev_nat").keys())) == 1   # ... but only repair_adopted would
    services[key] = entry                       # the agent goes on
    xdp.send(syn(VIP_A, 45000))
    assert_reply_goes_to(xdp, 45000, VIP_A)


def test_every_service_on_a_shared_address_is_written_with_the_flag(xdp: Harness):
    """A backend row carries the flag its address's sharing has when it is written
    (step 1 of the update order), for the second service on an address and for a
    third one, whose arrival changes no sharing and so rewrites no other row. The
    writer skips the per-row lookup while no address is shared (RevNat.shared_count),
    so the count must follow every attach, detach and adoption."""
    from controlplane.dataplane.model import ip_to_be32
    vip_c = "10.96.0.12"
    at_backends: dict[str, bool] = {}

    def newest_pod_row_flag() -> bool:
        """The flag of the POD's backend row with the highest service id: the row the
        upsert in progress has just written (the writer records its ids later)."""
        rows = {int(b.svc_id): bool(b.flags & F_REPLY_ENTRY)
                for _, b in xdp.dp.table("backends").items_lookup_batch()
                if b.ip == ip_to_be32(POD) and b.svc_id}
        return rows[max(rows)]

    def record(vip: str):
        def phase(name: str) -> None:
            if name == "backends":
                at_backends[vip] = newest_pod_row_flag()
        return phase

    try:
        a = xdp.service(vip=VIP_A, backends=(POD,))
        xdp.writer.after_phase = record(VIP_B)
        b = xdp.service(vip=VIP_B, backends=(POD,))
        xdp.writer.after_phase = record(vip_c)
        c = xdp.service(vip=vip_c, backends=(POD,))
    finally:
        xdp.writer.after_phase = None
    assert at_backends == {VIP_B: True, vip_c: True}
    assert all(reply_flag(xdp, fe) for fe in (a, b, c))
    assert xdp.writer.revnat.shared_count == 1
    xdp.writer.delete(c)
    assert xdp.writer.revnat.shared_count == 1 and reply_flag(xdp, a) and reply_flag(xdp, b)
    adopted = MapWriter(xdp.dp)
    assert adopted.revnat.shared_count == 1
    xdp.writer.delete(b)
    assert xdp.writer.revnat.shared_count == 0 and not reply_flag(xdp, a)


WRONG_REV_NAT = ("missing", "other", "stale", "unused")


@pytest.mark.parametrize("wrong", [(w,) for w in WRONG_REV_NAT] + [("missing", "unused"), WRONG_REV_NAT],
                         ids=lambda w: "+".join(w))
def test_adoption_finds_each_wrong_rev_nat_entry_with_no_address_shared(xdp: Harness, wrong):
    """With no address shared, adoption compares all rev_nat entries at once (as
    columns); each kind of wrong entry is still found, alone and together: a missing
    one, one naming another frontend, one with a stale shared flag, one no service
    uses, and a missing one beside an unused one (as many entries as addresses in
    use). The repair writes them, after which nothing is found."""
    from controlplane.dataplane.model import ip_to_be32
    from controlplane.dataplane.revnat import F_SHARED
    pods = ("10.244.2.51", "10.244.2.52", "10.244.2.53", "10.244.2.54")
    xdp.service(vip=VIP_A, backends=pods)
    xdp.service(vip=VIP_B, backends=("10.244.2.60",))
    assert MapWriter(xdp.dp).revnat.pending == 0
    t = xdp.dp.table("rev_nat")
    entries = {int(k.ip): (k, v) for k, v in t.items()}
    missing, other, stale, _ = (entries[ip_to_be32(p)] for p in pods)
    if "missing" in wrong:
        del t[missing[0]]
    if "other" in wrong:
        v = other[1]
        v.vip = ip_to_be32(VIP_B)
        t[other[0]] = v
    if "stale" in wrong:
        v = stale[1]
        v.flags |= F_SHARED
        t[stale[0]] = v
    if "unused" in wrong:
        unused = type(missing[0])()
        unused.ip, unused.port, unused.proto = ip_to_be32("10.244.9.9"), missing[0].port, missing[0].proto
        t[unused] = missing[1]
    adopted = MapWriter(xdp.dp)
    assert adopted.revnat.pending == len(wrong) and adopted.adoption_drift == len(wrong)
    assert adopted.repair_adopted() == len(wrong)
    assert MapWriter(xdp.dp).adoption_drift == 0
    assert len(list(t.keys())) == 5


def test_adoption_finds_a_reply_flag_set_where_no_address_is_shared(xdp: Harness):
    """No address shared: a backend entry carrying the reply-entry flag anyway is
    found (adoption's quick path looks for a set flag only) and repair clears it."""
    a = xdp.service(vip=VIP_A, backends=(POD,))
    table, key = backend_entry(xdp, a)
    entry = table[key]
    entry.flags |= F_REPLY_ENTRY
    table[key] = entry
    adopted = MapWriter(xdp.dp)
    assert adopted.revnat.shared_count == 0 and adopted.adoption_drift == 1
    assert adopted.repair_adopted() == 1
    assert not reply_flag(xdp, a) and MapWriter(xdp.dp).adoption_drift == 0


def test_a_shared_backends_reset_closes_the_flow_and_the_reused_tuple_goes_to_its_new_backend(xdp: Harness):
    """The backend's RST is matched on its reply entry; it must close the flow's forward
    entry too, as a non-shared backend's does. Left current, the client's next connection
    on the same tuple (its port is free at once after a reset) had its ACK sent to the
    old backend, which reset it again."""
    pods = (POD, "10.244.2.51")
    xdp.service(vip=VIP_A, backends=pods, algorithm="rr")
    xdp.service(vip=VIP_B, backends=pods)             # every address shared

    def client(flags: str):
        return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP_A) / TCP(sport=44000, dport=80, flags=flags)

    def from_backend(ip: str, flags: str):
        return Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=ip, dst=CLIENT) / TCP(sport=POD_PORT, dport=44000, flags=flags)

    first = xdp.send(client("S")).pkt[IP].dst
    xdp.send(from_backend(first, "SA"))
    assert xdp.send(client("A")).pkt[IP].dst == first
    out = xdp.send(from_backend(first, "R"))
    assert (out.pkt[IP].src, out.pkt[TCP].sport) == (VIP_A, 80)
    (fwd,) = [v for k, v in xdp.dp.table("conntrack").items() if k.dir == const("CT_DIR_FORWARD")]
    assert fwd.flags & const("CT_F_CLOSING")
    second = xdp.send(client("S")).pkt[IP].dst
    assert second != first                            # rr moved on: a new connection
    xdp.send(from_backend(second, "SA"))
    for _ in range(3):
        assert xdp.send(client("A")).pkt[IP].dst == second
