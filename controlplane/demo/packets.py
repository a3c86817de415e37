"""The packet demo: load the real XDP program, program a sample service into its
maps, and push scapy packets through it with BPF_PROG_TEST_RUN, printing each
packet before and after and the counters at the end."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controlplane.dataplane.config import DataplaneConfig
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.program import Dataplane
from controlplane.dataplane.testrun import TestRunner
from controlplane.dataplane.writer import MapWriter

CLIENT, CLIENT_MAC, NODE_MAC = "10.244.0.10", "02:00:00:00:00:01", "02:00:00:00:00:02"
WEB_VIP, DNS_VIP, EMPTY_VIP = "10.96.0.100", "10.96.0.10", "10.96.0.200"
PODS = ("10.244.1.11", "10.244.1.12", "10.244.1.13")


def describe(raw: bytes) -> str:
    p = Ether(raw)
    if IP not in p:
        return p.summary()
    ip = p[IP]
    if TCP in p:
        l4 = f"TCP {ip.src}:{p[TCP].sport} > {ip.dst}:{p[TCP].dport} [{p[TCP].flags}] seq={p[TCP].seq} ack={p[TCP].ack}"
    elif UDP in p and IPerror not in p:
        l4 = f"UDP {ip.src}:{p[UDP].sport} > {ip.dst}:{p[UDP].dport} len={p[UDP].len}"
    elif ICMP in p:
        l4 = f"ICMP {ip.src} > {ip.dst} type={p[ICMP].type} code={p[ICMP].code}"
        if UDPerror in p:
            l4 += f" quoting UDP {p[IPerror].src}:{p[UDPerror].sport} > {p[IPerror].dst}:{p[UDPerror].dport}"
    else:
        l4 = f"IP {ip.src} > {ip.dst} proto={ip.proto}"
    return f"{l4} ttl={ip.ttl} [{checksums_ok(p)}]"


def checksums_ok(p: Ether) -> str:
    """Let scapy recompute every checksum; 'checksums ok' if nothing changes."""
    q = p.copy()
    for layer in (IP, TCP, ICMP, IPerror):
        if layer in q:
            del q[layer].chksum
    if UDP in q and q[UDP].chksum != 0:
        del q[UDP].chksum
    return "checksums ok" if bytes(Ether(bytes(q))) == bytes(p) else "CHECKSUM MISMATCH"


def run_packet_demo() -> int:
    print("== svcxdp packet demo: the real XDP program, scapy packets, BPF_PROG_TEST_RUN ==")
    dp = Dataplane.load(DataplaneConfig(instance="demo", pin=False, ct_size=65536))
    try:
        print(f"loaded XDP program svcxdp_main (kernel prog id {dp.prog_id}) with its maps\n")
        writer = MapWriter(dp)
        web = ServiceState(Frontend(WEB_VIP, 80, "TCP"), tuple(Backend(ip, 8080) for ip in PODS), "rr")
        dns = ServiceState(Frontend(DNS_VIP, 53, "UDP"), (Backend(PODS[0], 5353),))
        empty = ServiceState(Frontend(EMPTY_VIP, 80, "TCP"), ())
        empty_udp = ServiceState(Frontend(EMPTY_VIP, 80, "UDP"), ())
        for s in (web, dns, empty, empty_udp):
            ends = ", ".join(f"{b.ip}:{b.port}" for b in s.backends) or "<no endpoints>"
            print(f"service {s.frontend} -> {ends} ({s.algorithm}) svc_id={writer.upsert(s)}")
        run = TestRunner(dp.prog_fd)
        eth = Ether(src=CLIENT_MAC, dst=NODE_MAC)
        steps = [
            ("new TCP connection to the ClusterIP: DNAT, round robin",
             eth / IP(src=CLIENT, dst=WEB_VIP) / TCP(sport=40000, dport=80, flags="S", seq=100)),
            ("its next packet: conntrack keeps the backend",
             eth / IP(src=CLIENT, dst=WEB_VIP) / TCP(sport=40000, dport=80, flags="A", seq=101) / Raw(b"GET /")),
            ("the backend's reply: reverse NAT back to the VIP",
             Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=PODS[0], dst=CLIENT) / TCP(sport=8080, dport=40000, flags="SA", seq=7, ack=101)),
            ("a second connection: round robin picks the next pod",
             eth / IP(src=CLIENT, dst=WEB_VIP) / TCP(sport=40001, dport=80, flags="S")),
            ("UDP DNS query to the DNS ClusterIP",
             eth / IP(src=CLIENT, dst=DNS_VIP) / UDP(sport=33333, dport=53) / Raw(b"\x12\x34query")),
            ("the DNS pod has no listener: its ICMP error is translated for the client",
             Ether(src=NODE_MAC, dst=CLIENT_MAC) / IP(src=PODS[0], dst=CLIENT) / ICMP(type=3, code=3) /
             bytes(IP(src=CLIENT, dst=PODS[0]) / UDP(sport=33333, dport=5353) / Raw(b"\x12\x34query"))[:28]),
            ("TCP to a service without endpoints: RST sent back (connection refused)",
             eth / IP(src=CLIENT, dst=EMPTY_VIP) / TCP(sport=40002, dport=80, flags="S", seq=5000)),
            ("UDP to a service without endpoints: ICMP port unreachable sent back",
             eth / IP(src=CLIENT, dst=EMPTY_VIP, proto=17) / UDP(sport=40003, dport=80) / Raw(b"hi")),
            ("not a service: passed untouched",
             eth / IP(src=CLIENT, dst="10.244.1.12") / TCP(sport=40004, dport=8080, flags="S")),
        ]
        for i, (what, pkt) in enumerate(steps, 1):
            res = run.run(bytes(pkt))
            print(f"\n[{i}] {what}")
            print(f"    in : {describe(bytes(pkt))}")
            print(f"    out: {res.verdict_name:<8} {describe(res.data)}")
        print("\ndatapath counters:", {k: v for k, v in dp.counters().items() if v})
        for s in (web, dns, empty, empty_udp):
            print(f"service {s.frontend}: {dp.service_stats(writer.svc_id(s.frontend))}")
        return 0
    finally:
        dp.close()
