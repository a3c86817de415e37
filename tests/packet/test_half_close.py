"""A half-closed TCP connection keeps its flow (bpf/svcxdp.h SVCXDP_CT_F_FIN_CLIENT).

One side's FIN closes only its sending side: a client that shuts down its writes and
waits for the answer, or a server that has said all and reads on, may pause past the
10 s close timeout and then send. Linux conntrack keeps such a flow for minutes
(FIN_WAIT 120 s, CLOSE_WAIT 60 s; kube-proxy sets the latter to an hour); the datapath
gave it the close timeout at the first FIN, after which the answer left without reverse
NAT (a non-shared backend) or the client's next segment went to a newly chosen backend
(a shared one). Now a flow closes — the short timeout — when both sides have sent a FIN
or either a RST; a reply entry, which sees the backend's side only, is kept by its flow.

Entries are aged by writing last_seen on the datapath's own clock, as
test_conntrack_state does: nothing waits.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane.affinity_maps import coarse_now_ns
from controlplane.dataplane.ctgc import GRACE_NS, ConntrackGC
from controlplane.dataplane.flows import closed, half_closed
from controlplane.dataplane.layout import const

from .harness import CLIENT, CLIENT_MAC, NODE_MAC, Harness, delta
from .test_conntrack_state import set_ct_last_seen

pytestmark = pytest.mark.root

SEC = 10**9
FORWARD = const("CT_DIR_FORWARD")
VIP_A, VIP_B = "10.96.0.10", "10.96.0.11"
PODS = ("10.244.2.50", "10.244.2.51")
PORT = 8080
CPORT = 45000


def from_client(vip: str, flags: str, data: bytes = b""):
    return Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=vip) / TCP(sport=CPORT, dport=80, flags=flags) / data


def from_backend(pod: str, flags: str, data: bytes = b""):
    return Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=pod, dst=CLIENT) / TCP(sport=PORT, dport=CPORT, flags=flags) / data


def established(xdp: Harness, vip: str) -> str:
    """A connection to `vip` through its handshake; its backend."""
    pod = xdp.send(from_client(vip, "S")).pkt[IP].dst
    xdp.send(from_backend(pod, "SA"))
    assert xdp.send(from_client(vip, "A")).pkt[IP].dst == pod
    return pod


def forward_flags(xdp: Harness) -> int:
    (flags,) = [v.flags for k, v in xdp.dp.table("conntrack").items() if k.dir == FORWARD]
    return flags


def idle_past_close_timeout(xdp: Harness) -> None:
    set_ct_last_seen(xdp, coarse_now_ns() - xdp.dp.config.tcp_close_timeout_s * SEC - 2 * SEC)


@pytest.mark.parametrize("shared", [False, True], ids=["own-backends", "shared-backends"])
@pytest.mark.parametrize("first", ["client", "backend"])
def test_a_half_closed_flow_outlives_the_close_timeout_and_a_closed_one_does_not(xdp: Harness, shared: bool,
                                                                                first: str):
    """Either side closes first and pauses past the close timeout; the other side's
    segments still follow the flow both ways. Once both have sent a FIN the flow closes
    with the short timeout. With shared backends (another service lists the same pods)
    the backend's answers are matched on the flow's reply entry, which its FIN closes:
    the forward entry keeps it."""
    xdp.service(vip=VIP_A, backends=PODS, algorithm="rr")
    if shared:
        xdp.service(vip=VIP_B, backends=PODS)
    pod = established(xdp, VIP_A)
    if first == "client":
        xdp.send(from_client(VIP_A, "FA"))
    else:
        assert xdp.send(from_backend(pod, "FA")).pkt[IP].src == VIP_A
    assert half_closed(forward_flags(xdp)) and not closed(forward_flags(xdp))
    idle_past_close_timeout(xdp)
    before = xdp.counters()
    # the open side talks after the pause; the closed side acknowledges
    if first == "client":
        out = xdp.send(from_backend(pod, "PA", b"the answer"))
        assert (out.pkt[IP].src, out.pkt[TCP].sport) == (VIP_A, 80), "the answer left without reverse NAT"
        assert xdp.send(from_client(VIP_A, "A")).pkt[IP].dst == pod
    else:
        assert xdp.send(from_client(VIP_A, "PA", b"more")).pkt[IP].dst == pod, "sent to another backend"
        out = xdp.send(from_backend(pod, "A"))
        assert (out.pkt[IP].src, out.pkt[TCP].sport) == (VIP_A, 80)
    assert delta(before, xdp.counters()) == {"revnat": 1, "ct_hit": 1}
    # the other side's FIN closes it: after the close timeout its segments are a new flow
    if first == "client":
        xdp.send(from_backend(pod, "FA"))
    else:
        xdp.send(from_client(VIP_A, "FA"))
    assert closed(forward_flags(xdp))
    idle_past_close_timeout(xdp)
    before = xdp.counters()
    xdp.send(from_client(VIP_A, "A"))
    assert delta(before, xdp.counters()).get("ct_new") == 1


def test_a_reset_closes_a_half_closed_flow(xdp: Harness):
    xdp.service(vip=VIP_A, backends=PODS)
    xdp.service(vip=VIP_B, backends=PODS)
    pod = established(xdp, VIP_A)
    xdp.send(from_client(VIP_A, "FA"))
    assert half_closed(forward_flags(xdp))
    xdp.send(from_backend(pod, "R"))          # matched on the reply entry
    assert closed(forward_flags(xdp))


def test_the_gc_keeps_a_half_closed_flow_and_removes_a_closed_one(xdp: Harness):
    xdp.service(vip=VIP_A, backends=PODS)
    xdp.service(vip=VIP_B, backends=PODS)
    pod = established(xdp, VIP_A)
    xdp.send(from_client(VIP_A, "FA"))
    table = xdp.dp.table("conntrack")
    assert len(table) == 2                    # the forward entry and its reply entry
    gc = ConntrackGC(xdp.dp)

    def idle_past_close_timeout_and_grace() -> None:
        set_ct_last_seen(xdp, coarse_now_ns() - xdp.dp.config.tcp_close_timeout_s * SEC - GRACE_NS - 2 * SEC)

    idle_past_close_timeout_and_grace()
    assert gc.sweep_all().total_deleted == 0 and len(table) == 2
    xdp.send(from_backend(pod, "FA"))         # the backend's side closes too
    assert closed(forward_flags(xdp))
    idle_past_close_timeout_and_grace()
    assert gc.sweep_all().total_deleted == 2 and len(table) == 0


def test_a_syn_does_not_take_a_half_closed_tuple_over(xdp: Harness):
    """A half-closed flow is still its tuple's connection (netfilter ignores a SYN in
    CLOSE_WAIT): a SYN on the tuple (spoofed, or a port reused too early) must not move
    the rest of it to another backend. (A closed one is reopened: test_conntrack_state.)"""
    xdp.service(vip=VIP_A, backends=PODS, algorithm="rr")
    pod = established(xdp, VIP_A)
    xdp.send(from_backend(pod, "FA"))           # the server has said all; the client still sends
    xdp.send(from_client(VIP_A, "S"))           # (a bare SYN looks in no confirmed entry: a new one waits)
    for _ in range(3):
        assert xdp.send(from_client(VIP_A, "PA", b"more")).pkt[IP].dst == pod


def test_a_half_closed_flow_goes_after_the_half_close_timeout(xdp: Harness):
    """Not for ever: a half-closed flow whose other side never sends again (a client
    gone, a server leaking CLOSE_WAIT sockets) leaves after the half-close timeout (an
    hour, kube-proxy's CLOSE_WAIT), with its SNAT port if it had one."""
    from controlplane.dataplane.flows import Timeouts
    xdp.service(vip=VIP_A, backends=PODS, algorithm="rr")
    established(xdp, VIP_A)
    xdp.send(from_client(VIP_A, "FA"))
    half = xdp.dp.config.tcp_half_close_timeout_s
    assert Timeouts().tcp_half_close == half == 3600
    set_ct_last_seen(xdp, coarse_now_ns() - (half - 60) * SEC)
    before = xdp.counters()
    xdp.send(from_client(VIP_A, "A"))
    assert delta(before, xdp.counters()) == {"ct_hit": 1}
    set_ct_last_seen(xdp, coarse_now_ns() - (half + 2) * SEC)
    before = xdp.counters()
    xdp.send(from_client(VIP_A, "A"))
    assert delta(before, xdp.counters()).get("ct_new") == 1
