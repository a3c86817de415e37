"""The way out after a rewrite (bpf/fib.h), frame by frame through BPF_PROG_TEST_RUN in a
node namespace whose FIB the program asks (tests/packet/nodenet.py): a frame for a device
in tx_ports is redirected with its TTL decremented, its checksums valid and the MACs the
FIB gave; for any other device, with TTL 1 or above the egress MTU without DF it goes to
the stack untouched; above the egress MTU with DF it is answered "fragmentation needed"
about the frame as its sender sent it."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from controlplane.dataplane.model import Backend, Frontend, ServiceState

from . import nodenet
from .harness import VIP, Harness, assert_frag_needed

CLIENT, CLIENT_MAC = next(iter(nodenet.CLIENTS.items()))


@pytest.fixture
def node():
    with nodenet.created() as n:
        yield n


@pytest.fixture
def local_service(xdp: Harness):
    """A ClusterIP whose one backend is the node's local pod."""
    xdp.writer.upsert(ServiceState(Frontend(VIP, 80, "TCP"), (Backend(nodenet.LOCAL_POD, 8080),), "random"))
    xdp.writer.upsert(ServiceState(Frontend(VIP, 53, "UDP"), (Backend(nodenet.LOCAL_POD, 5353),), "random"))


def _pod0_mac(node) -> str:
    return nodenet._ip(node.name, "-o", "link", "show", "pod0").split("link/ether ")[1].split()[0]


def _run(xdp: Harness, node, pkt, ingress: int):
    res = node.call(xdp.runner.run, bytes(pkt), 1, ingress)
    return res.verdict_name, Ether(res.data)


def _valid_checksums(p: Ether) -> bool:
    again = Ether(bytes(p))
    del again[IP].chksum
    l4 = again[TCP] if TCP in again else again[UDP]
    del l4.chksum
    again = Ether(bytes(again))
    l4_in = p[TCP] if TCP in p else p[UDP]
    l4_out = again[TCP] if TCP in again else again[UDP]
    return again[IP].chksum == p[IP].chksum and l4_out.chksum == l4_in.chksum


def _syn(ttl: int = 64, size: int = 0, flags: str = "S", df: bool = False):
    return (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:02") /
            IP(src=CLIENT, dst=VIP, ttl=ttl, flags="DF" if df else 0) /
            TCP(sport=40000, dport=80, flags=flags) / (b"x" * size))


def test_a_frame_for_a_target_is_redirected_with_ttl_macs_and_checksums(xdp: Harness, node, local_service):
    xdp.dp.allow_redirect(node.pod_ifindex, node.name)
    try:
        before = xdp.counters()
        verdict, out = _run(xdp, node, _syn(), node.ext_ifindex)
        assert verdict == "XDP_REDIRECT"
        assert (out[IP].dst, out[TCP].dport, out[IP].src, out[IP].ttl) == (nodenet.LOCAL_POD, 8080, CLIENT, 63)
        assert (out.dst, out.src) == (nodenet.LOCAL_POD_MAC, _pod0_mac(node))
        assert _valid_checksums(out)
        assert xdp.counters()["fib_redirect"] == before["fib_redirect"] + 1
        # the pod's reply: reverse NAT, then out of ext0 towards the client — not a
        # target, so to the stack untouched (TTL, MACs)
        reply = (Ether(src=nodenet.LOCAL_POD_MAC, dst=_pod0_mac(node)) /
                 IP(src=nodenet.LOCAL_POD, dst=CLIENT, ttl=64) / TCP(sport=8080, dport=40000, flags="SA"))
        verdict, back = _run(xdp, node, reply, node.pod_ifindex)
        assert verdict == "XDP_PASS" and (back[IP].src, back[TCP].sport, back[IP].ttl) == (VIP, 80, 64)
        assert (back.src, back.dst) == (nodenet.LOCAL_POD_MAC, _pod0_mac(node))
        assert xdp.counters()["redirect_refused"] == before["redirect_refused"] + 1
        # ... and redirected once ext0 is a target, to the client's MAC from ext0's
        xdp.dp.allow_redirect(node.ext_ifindex, node.name)
        verdict, back = _run(xdp, node, reply, node.pod_ifindex)
        assert verdict == "XDP_REDIRECT" and (back[IP].src, back[IP].ttl) == (VIP, 63)
        assert (back.dst, back.src) == (CLIENT_MAC, node.ext_mac) and _valid_checksums(back)
    finally:
        xdp.dp.forbid_redirect(node.pod_ifindex)
        xdp.dp.forbid_redirect(node.ext_ifindex)


def test_a_frame_for_a_device_that_is_no_target_goes_to_the_stack_untouched(xdp: Harness, node, local_service):
    verdict, out = _run(xdp, node, _syn(), node.ext_ifindex)
    assert verdict == "XDP_PASS"
    assert (out[IP].dst, out[IP].ttl, out.src, out.dst) == (nodenet.LOCAL_POD, 64, CLIENT_MAC, "02:00:00:00:00:02")
    assert _valid_checksums(out)


def test_ttl_1_and_frames_above_the_egress_mtu_are_left_to_the_stack(xdp: Harness, node, local_service):
    xdp.dp.allow_redirect(node.pod_ifindex, node.name)
    try:
        verdict, out = _run(xdp, node, _syn(ttl=1), node.ext_ifindex)
        assert verdict == "XDP_PASS" and out[IP].ttl == 1 and out[IP].dst == nodenet.LOCAL_POD
        nodenet._ip(node.name, "link", "set", "pod0", "mtu", "1000")
        verdict, out = _run(xdp, node, _syn(size=1200), node.ext_ifindex)
        assert verdict == "XDP_PASS" and out[IP].ttl == 64 and out[IP].dst == nodenet.LOCAL_POD
        verdict, out = _run(xdp, node, _syn(size=900), node.ext_ifindex)
        assert verdict == "XDP_REDIRECT" and out[IP].ttl == 63
    finally:
        xdp.dp.forbid_redirect(node.pod_ifindex)


def test_a_frame_above_the_egress_mtu_with_df_is_answered_fragmentation_needed_as_it_was_sent(
        xdp: Harness, node, local_service):
    """The node's stack would answer about the translated frame (the pod's address and
    port), which the client cannot match to its socket: its path MTU never drops and a
    DF sender (any Linux UDP socket) resends the same size for ever. The answer quotes
    the frame as the client sent it, from the service's address; a pod's reply too large
    for the way to the client is answered to the pod, quoting what the pod sent."""
    nodenet._ip(node.name, "link", "set", "pod0", "mtu", "1000")
    before = xdp.counters()
    verdict, out = _run(xdp, node, _syn(size=1200, df=True), node.ext_ifindex)
    assert verdict == "XDP_TX"
    assert_frag_needed(out, (CLIENT, CLIENT_MAC), (CLIENT, 40000, VIP, 80), 1000)
    udp = (Ether(src=CLIENT_MAC, dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=VIP, flags="DF") /
           UDP(sport=40001, dport=53) / (b"q" * 1400))
    verdict, out = _run(xdp, node, udp, node.ext_ifindex)
    assert verdict == "XDP_TX"
    assert_frag_needed(out, (CLIENT, CLIENT_MAC), (CLIENT, 40001, VIP, 53), 1000)
    assert xdp.counters()["frag_needed"] == before["frag_needed"] + 2
    # larger than the device it came in on allows: no frame of the wire but an aggregate
    # (GRO before generic XDP, a pod's TSO segment over its veth), segmented by the stack
    nodenet._ip(node.name, "link", "set", "ext0", "mtu", "1100")
    verdict, out = _run(xdp, node, _syn(size=1200, df=True), node.ext_ifindex)
    assert verdict == "XDP_PASS" and out[IP].dst == nodenet.LOCAL_POD
    assert xdp.counters()["frag_needed"] == before["frag_needed"] + 2
    # the answer's way back: a pod's reply too large for ext0
    nodenet._ip(node.name, "link", "set", "pod0", "mtu", "1500")
    nodenet._ip(node.name, "link", "set", "ext0", "mtu", "1100")
    assert _run(xdp, node, _syn(), node.ext_ifindex)[0] == "XDP_PASS"
    reply = (Ether(src=nodenet.LOCAL_POD_MAC, dst=_pod0_mac(node)) /
             IP(src=nodenet.LOCAL_POD, dst=CLIENT, flags="DF") / TCP(sport=8080, dport=40000, flags="A") /
             (b"r" * 1200))
    verdict, out = _run(xdp, node, reply, node.pod_ifindex)
    assert verdict == "XDP_TX"
    assert_frag_needed(out, (nodenet.LOCAL_POD, nodenet.LOCAL_POD_MAC), (nodenet.LOCAL_POD, 8080, CLIENT, 40000), 1100)
    # without DF the stack fragments it: passed, translated
    verdict, out = _run(xdp, node, _without_df(reply), node.pod_ifindex)
    assert verdict == "XDP_PASS" and (out[IP].src, out[TCP].sport) == (VIP, 80)


def _without_df(p: Ether) -> Ether:
    q = Ether(bytes(p))
    q[IP].flags = 0
    del q[IP].chksum
    return Ether(bytes(q))
