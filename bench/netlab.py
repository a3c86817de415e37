"""The bench's own minimal topology: client netns -> node netns (forwarding) -> backend netns.

Everything lives in network namespaces named `svcxdp-bench-*` that this module creates and
removes by exact name; nothing (links, routes, XDP programs, iptables rules, traffic) is put
in the root namespace. Links are created inside the namespaces (`ip -n NODE link add ...
peer ... netns CLIENT`), so they never exist in the root namespace, not even briefly.

    client (cl0 10.128.0.2/24) <-veth-> (n-cl 10.128.0.1/24) node (n-be 10.200.0.1/24) <-veth-> (be0 10.200.0.2/24) backend

- node: ip_forward on, rp_filter off, routes 10.128.0.0/10 (pod sources) via the client and
  10.244.0.0/14 (every backend address) via the backend; permanent neighbour entries
  everywhere, so no ARP is ever needed (an XDP program on a veth sees every frame).
- backend: `local 10.244.0.0/14 dev lo`, so one namespace owns every backend address
  (AnyIP) and a TCP server on 0.0.0.0 answers for all of them; an XDP "sink" on be0
  counts UDP datagrams to port 8080 and drops them (the count is "delivered to the
  backends"), and passes everything else.
- client: default route via the node; an empty XDP program (pass) on cl0.
- Checksum offload is off on all four veth ends, as in the project's lab, so an XDP
  rewrite never meets a CHECKSUM_PARTIAL packet.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# SVCXDP_BENCH_NS_PREFIX: another prefix (still svcxdp-...), so that two bench runs on one
# machine neither collide nor sweep each other's namespaces.
PREFIX = os.environ.get("SVCXDP_BENCH_NS_PREFIX", "svcxdp-bench-")
if not PREFIX.startswith("svcxdp-"):
    raise ValueError(f"SVCXDP_BENCH_NS_PREFIX={PREFIX!r}: must start with svcxdp-")
NETNS_DIR = Path("/run/netns")

CLIENT_IP, NODE_CLIENT_IP = "10.128.0.2", "10.128.0.1"
BACKEND_NET_IP, NODE_BACKEND_IP = "10.200.0.2", "10.200.0.1"
CLIENT_MAC, NODE_CLIENT_MAC = "02:be:00:00:01:02", "02:be:00:00:01:01"
BACKEND_MAC, NODE_BACKEND_MAC = "02:be:00:00:02:02", "02:be:00:00:02:01"
POD_SOURCES = "10.128.0.0/10"       # client sources (new flows draw from here)
POD_CIDR = "10.128.0.0/9"           # the "cluster CIDR": client sources and backends
BACKEND_RANGE = "10.244.0.0/14"     # every backend address (10.245.x.y, 10.246.x.y)
BACKEND_PORT = 8080
SINK_PORT = BACKEND_PORT            # UDP to this port is counted and dropped by the sink


def sh(*argv: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, timeout=timeout, capture_output=True, text=True, **kw)


def in_ns(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    _check(ns)
    return sh("ip", "netns", "exec", ns, *argv, **kw)


def _check(ns: str) -> str:
    if not ns.startswith(PREFIX) or "/" in ns:
        raise ValueError(f"refusing to touch namespace {ns!r}: not a {PREFIX} name")
    return ns


def bench_namespaces() -> list[str]:
    """This bench's namespaces (exact prefix), present now."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX))


def delete_ns(ns: str) -> None:
    _check(ns)
    sh("ip", "netns", "delete", ns, check=False)


def sweep_stale() -> list[str]:
    """Remove namespaces a crashed earlier bench run left behind (prefix svcxdp-bench-)."""
    stale = bench_namespaces()
    for ns in stale:
        delete_ns(ns)
    return stale


def link_stats(ns: str, ifname: str) -> dict:
    out = sh("ip", "-n", _check(ns), "-s", "-j", "link", "show", "dev", ifname).stdout
    s = json.loads(out)[0]["stats64"]
    return {"rx_packets": s["rx"]["packets"], "rx_dropped": s["rx"]["dropped"],
            "tx_packets": s["tx"]["packets"], "tx_dropped": s["tx"]["dropped"]}


def cpu_times() -> dict[str, int]:
    """Machine-wide /proc/stat ticks (USER_HZ) by kind."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: int(v) for n, v in zip(names, f)}


USER_HZ = os.sysconf("SC_CLK_TCK")

SINK_PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
BPF_PERCPU_ARRAY(sink_count, u64, 2);   /* 0: UDP to the sink port (dropped), 1: passed */
int xdp_sink(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    u32 idx = 1;
    u64 *c;
    if ((void *)(eth + 1) > end) goto pass;
    if (eth->h_proto != htons(ETH_P_IP)) goto pass;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP) goto pass;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end || udp->dest != htons(SINK_PORT)) goto pass;
    idx = 0;
    c = sink_count.lookup(&idx);
    if (c) *c += 1;
    return XDP_DROP;
pass:
    c = sink_count.lookup(&idx);
    if (c) *c += 1;
    return XDP_PASS;
}
"""


def load_sink():
    """The backend's counting sink: (BPF object, program fd)."""
    from bcc import BPF
    bpf = BPF(text=SINK_PROGRAM.encode(), cflags=[f"-DSINK_PORT={SINK_PORT}"])
    return bpf, bpf.load_func(b"xdp_sink", BPF.XDP).fd


# A lab's floor: a frame sent on to the sink with no dataplane work (the sink's port and the
# MAC addresses set): redirected to the node's backend veth (bench_stack), or with
# -DTX_FLOOR sent back out of the interface it came in on (bench_nodeport).
FLOOR_PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
#ifndef TX_FLOOR
BPF_DEVMAP(floor_tx, 1);   /* slot 0: the node's backend veth */
#endif
int xdp_floor(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP)) return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP) return XDP_PASS;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end) return XDP_PASS;
    unsigned char dst[ETH_ALEN] = {DST_MAC}, src[ETH_ALEN] = {SRC_MAC};
    udp->dest = htons(SINK_PORT);
    __builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
    __builtin_memcpy(eth->h_source, src, ETH_ALEN);
#ifdef TX_FLOOR
    return XDP_TX;
#else
    return floor_tx.redirect_map(0, XDP_PASS);
#endif
}
"""


def _load_floor(dst_mac: str, src_mac: str, *cflags: str):
    """FLOOR_PROGRAM, built to write these MACs: (BPF object, program fd)."""
    from bcc import BPF
    mac = lambda m: ", ".join(f"0x{b}" for b in m.split(":"))  # noqa: E731
    bpf = BPF(text=FLOOR_PROGRAM.encode(),
              cflags=[f"-DSINK_PORT={SINK_PORT}", f"-DDST_MAC={mac(dst_mac)}", f"-DSRC_MAC={mac(src_mac)}",
                      *cflags])
    return bpf, bpf.load_func(b"xdp_floor", BPF.XDP).fd


def load_redirect_floor(node_ns: str):
    """The lab's own cost of a frame redirected from the client's veth to the backend's,
    with no dataplane work at all (no lookup, no NAT, no conntrack): the sink's port
    and the MAC addresses set, then bpf_redirect_map to the node's backend veth — the
    ceiling of any XDP dataplane in this topology. (BPF object, program fd)."""
    from controlplane.dataplane.attach import in_netns
    bpf, fd = _load_floor(BACKEND_MAC, NODE_BACKEND_MAC)
    from controlplane.dataplane.libbpf import u32_update
    with in_netns(node_ns):   # a DEVMAP names its device in the writer's namespace
        u32_update(bpf[b"floor_tx"].map_fd, 0, ifindex(node_ns, "n-be"))
    return bpf, fd


def load_tx_floor(dst_mac: str, src_mac: str):
    """A floor that sends each frame back out of the interface it came in on (XDP_TX),
    to dst_mac: (BPF object, program fd)."""
    return _load_floor(dst_mac, src_mac, "-DTX_FLOOR")


def ifindex(ns: str, dev: str) -> int:
    return json.loads(sh("ip", "-n", _check(ns), "-j", "link", "show", "dev", dev).stdout)[0]["ifindex"]


def flush_conntrack(ns: str) -> None:
    """Empty the namespace's conntrack table (that namespace only), as a fresh node has it."""
    from pyroute2 import Conntrack

    from controlplane.lab import netns

    def flush() -> None:
        ct = Conntrack()
        try:
            ct.flush()
        finally:
            ct.close()
    netns.call_in(_check(ns), flush)


def conntrack_drops(ns: str) -> int | None:
    """netfilter's drop + early_drop counters of the namespace, summed over CPUs (a full
    conntrack table drops or evicts on insert)."""
    r = in_ns(ns, "cat", "/proc/net/stat/nf_conntrack", check=False)
    lines = r.stdout.split("\n") if r.returncode == 0 else []
    if len(lines) < 2:
        return None
    head = lines[0].split()
    cols = [head.index(c) for c in ("drop", "early_drop") if c in head]
    return sum(int(ln.split()[c], 16) for ln in lines[1:] if ln.strip() for c in cols)


def sink_delivered(sink_bpf) -> int:
    t = sink_bpf[b"sink_count"]
    return int(t.sum(t.Key(0)).value)


@dataclass
class Topology:
    """One client -> node -> backend chain; `tag` keeps two of them apart."""

    tag: str
    client: str = ""
    node: str = ""
    backend: str = ""
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = f"{PREFIX}{self.tag}-client"
        self.node = f"{PREFIX}{self.tag}-node"
        self.backend = f"{PREFIX}{self.tag}-backend"

    def up(self) -> "Topology":
        for ns in (self.client, self.node, self.backend):
            sh("ip", "netns", "add", _check(ns))
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        n, c, b = self.node, self.client, self.backend
        sh("ip", "-n", n, "link", "add", "n-cl", "address", NODE_CLIENT_MAC, "type", "veth",
           "peer", "name", "cl0", "address", CLIENT_MAC, "netns", c)
        sh("ip", "-n", n, "link", "add", "n-be", "address", NODE_BACKEND_MAC, "type", "veth",
           "peer", "name", "be0", "address", BACKEND_MAC, "netns", b)
        in_ns(n, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
              "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf.n-cl.rp_filter=0",
              "net.ipv4.conf.n-be.rp_filter=0")
        for ns in (c, b):
            in_ns(ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                  "net.ipv4.conf.default.rp_filter=0")
        sh("ip", "-n", n, "addr", "add", f"{NODE_CLIENT_IP}/24", "dev", "n-cl")
        sh("ip", "-n", n, "addr", "add", f"{NODE_BACKEND_IP}/24", "dev", "n-be")
        sh("ip", "-n", c, "addr", "add", f"{CLIENT_IP}/24", "dev", "cl0")
        sh("ip", "-n", b, "addr", "add", f"{BACKEND_NET_IP}/24", "dev", "be0")
        for ns, dev in ((n, "n-cl"), (n, "n-be"), (c, "cl0"), (b, "be0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "route", "add", "default", "via", NODE_CLIENT_IP)
        sh("ip", "-n", b, "route", "add", "default", "via", NODE_BACKEND_IP)
        sh("ip", "-n", n, "route", "add", POD_SOURCES, "via", CLIENT_IP)
        sh("ip", "-n", n, "route", "add", BACKEND_RANGE, "via", BACKEND_NET_IP)
        sh("ip", "-n", b, "route", "add", "local", BACKEND_RANGE, "dev", "lo")
        sh("ip", "-n", c, "neigh", "replace", NODE_CLIENT_IP, "lladdr", NODE_CLIENT_MAC,
           "dev", "cl0", "nud", "permanent")
        sh("ip", "-n", n, "neigh", "replace", CLIENT_IP, "lladdr", CLIENT_MAC, "dev", "n-cl",
           "nud", "permanent")
        sh("ip", "-n", n, "neigh", "replace", BACKEND_NET_IP, "lladdr", BACKEND_MAC, "dev", "n-be",
           "nud", "permanent")
        sh("ip", "-n", b, "neigh", "replace", NODE_BACKEND_IP, "lladdr", NODE_BACKEND_MAC,
           "dev", "be0", "nud", "permanent")
        from controlplane.lab.offload import disable_tx_checksum
        disable_tx_checksum(n, "n-cl", "n-be")
        disable_tx_checksum(c, "cl0")
        disable_tx_checksum(b, "be0")
        return self

    def down(self) -> None:
        for ns in reversed(self.created):
            delete_ns(ns)
        self.created.clear()

    def conntrack_count(self) -> int | None:
        r = in_ns(self.node, "cat", "/proc/sys/net/netfilter/nf_conntrack_count", check=False)
        return int(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


def wait_gone(names: list[str], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and any((NETNS_DIR / n).exists() for n in names):
        time.sleep(0.05)
