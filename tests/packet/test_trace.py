"""`svcctl trace`'s prediction (controlplane.dataplane.trace over the pinned maps) against
what the real program does with the same packet (BPF_PROG_TEST_RUN of the pinned
program, trace.run): thousands of random tuples per algorithm, with and without ClientIP
affinity, new flows mixed with packets of known flows (ACKs, FINs, RSTs, reopening SYNs)."""
from __future__ import annotations

import os
import random
import socket
import struct
from pathlib import Path

import pytest

from controlplane.dataplane import flowsets, udprecent
from controlplane.dataplane.config import FLOW_TABLES, PROGRAM_PINS
from controlplane.dataplane.libbpf import lib
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.pinned import PinnedMaps
from controlplane.dataplane.trace import Address, Packet, run, trace

from .harness import Harness

PIN_ROOT = Path("/sys/fs/bpf/svcxdp")
MAPS = ("services", "slots", "backends", "rev_nat", *FLOW_TABLES, flowsets.SEED_MAP, udprecent.MAP, "rr_state",
        "backend_conns", "maglev", "affinity", "source_ranges", "sock_config")
ALGORITHMS = ("random", "rr", "wrr", "sh", "dh", "maglev", "lc", "wlc", "sed", "nq")
VIP = "10.96.7.1"
BACKENDS = tuple(f"10.244.3.{10 + i}" for i in range(5))
TUPLES = 2000
S, A, F, R = 0x02, 0x10, 0x01, 0x04


def pin_dataplane(xdp: Harness, instance: str) -> Path:
    pins = PIN_ROOT / instance
    pins.mkdir(parents=True, exist_ok=True)
    for name in MAPS:
        assert lib().bpf_obj_pin(xdp.dp.raw_table(name).map_fd, str(pins / name).encode()) == 0, name
    for entry, fd in (("pod", xdp.dp.prog_fd), ("external", xdp.dp.external_prog_fd)):
        assert lib().bpf_obj_pin(fd, str(pins / PROGRAM_PINS[entry]).encode()) == 0
    return pins


def unpin(pins: Path) -> None:
    for entry in pins.iterdir():
        entry.unlink()
    pins.rmdir()


@pytest.fixture
def maps(xdp: Harness):
    pins = pin_dataplane(xdp, f"pytest-trace-{os.getpid()}")
    m = PinnedMaps(pins)
    try:
        yield m
    finally:
        m.close()
        unpin(pins)


def clear(xdp: Harness, name: str) -> None:
    table = xdp.dp.table(name)
    for k in list(table.keys()):
        try:
            del table[k]
        except KeyError:
            pass


def service(algorithm: str, affinity: int = 0, protocol: str = "TCP") -> ServiceState:
    weights = {ip: 1 + i % 3 for i, ip in enumerate(BACKENDS)} if algorithm in ("wrr", "wlc", "sed", "nq") else {}
    return ServiceState(Frontend(VIP, 80, protocol), tuple(Backend(ip, 8080, weight=weights.get(ip, 1))
                                                            for ip in BACKENDS), algorithm, affinity)


def compare(maps: PinnedMaps, packets) -> dict[str, int]:
    """Trace then run each packet; every run must land where its trace said. Returns how
    many traces each way of choosing made."""
    by: dict[str, int] = {}
    mismatches = []
    for p in packets:
        t = trace(maps, p)
        r = run(maps, t)
        by[t.choice.by if t.choice else t.reason] = by.get(t.choice.by if t.choice else t.reason, 0) + 1
        if t.choice is not None and not t.choice.exact:
            ok = r.dst in t.choice.candidates
        else:
            ok = t.rewrite is not None and r.dst == t.rewrite.dst and r.src == t.rewrite.src
        if not ok or r.verdict not in t.verdict.split("|"):
            mismatches.append((p, t.choice, t.rewrite, t.verdict, r))
    assert not mismatches, f"{len(mismatches)} of {len(packets)} differ, first: {mismatches[:2]}"
    return by


def random_packets(rng: random.Random, n: int, protocol: str, clients: list[str] | None = None) -> list[Packet]:
    """New flows from random (or pooled) clients, and every fifth packet one of a flow
    seen before, with ACK, FIN, RST or a SYN (which reopens a closed flow)."""
    seen: list[tuple[str, int]] = []
    out = []
    for i in range(n):
        if seen and i % 5 == 4:
            src, sport = rng.choice(seen)
            flags = rng.choice((A, A, F, R, S)) if protocol == "TCP" else None
        else:
            src = rng.choice(clients) if clients else socket.inet_ntoa(struct.pack("!I", rng.getrandbits(32)))
            sport = rng.randrange(1024, 65536)
            seen.append((src, sport))
            flags = S if protocol == "TCP" else None
        out.append(Packet(src, sport, VIP, 80, protocol, flags))
    return out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_trace_predicts_what_the_program_does(xdp: Harness, maps: PinnedMaps, algorithm: str):
    rng = random.Random(f"trace-{algorithm}")
    for protocol in ("TCP", "UDP"):
        xdp.reset()
        xdp.writer.upsert(service(algorithm, protocol=protocol))
        by = compare(maps, random_packets(rng, TUPLES // 2, protocol))
        assert by.get("conntrack", 0) > TUPLES // 20 and by.get(algorithm, 0) > TUPLES // 4, by


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_trace_predicts_client_ip_affinity(xdp: Harness, maps: PinnedMaps, algorithm: str):
    clear(xdp, "affinity")
    rng = random.Random(f"affinity-{algorithm}")
    xdp.writer.upsert(service(algorithm, affinity=600))
    clients = [f"10.1.{i // 250}.{1 + i % 250}" for i in range(60)]
    by = compare(maps, random_packets(rng, TUPLES, "TCP", clients))
    assert by.get("affinity", 0) > TUPLES // 2 and by.get(algorithm, 0) >= 30, by
    clear(xdp, "affinity")


# ---- whole commands: svcctl trace / get flows over the pins, without building the program ----
ROOT = Path(__file__).resolve().parents[2]
# Run the command in a fresh interpreter and fail if bcc was imported on the way.
NO_BCC = ("import sys; from controlplane.cli import main; rc = main(sys.argv[1:]); "
          "sys.exit(3 if 'bcc' in sys.modules else rc)")


def svcctl(tmp_path: Path, *args: str, rc: int = 0) -> str:
    """svcctl's output (its error with rc != 0), which must exit with `rc`."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", NO_BCC, *args, "--state-dir", str(tmp_path)], cwd=ROOT,
                          text=True, capture_output=True)
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    return proc.stdout if rc == 0 else proc.stderr


def test_trace_of_an_existing_flow_shows_its_conntrack_entry(xdp: Harness, maps: PinnedMaps, tmp_path: Path):
    import json
    xdp.writer.upsert(service("rr"))
    node = maps.pin_dir.name
    first = run(maps, trace(maps, Packet("10.1.0.5", 41000, VIP, 80, "TCP", S)))
    backend = list(first.dst)
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "10.1.0.5:41000", f"{VIP}:80/tcp", "-o", "json"))
    ct = doc["conntrack"]
    assert (ct["table"], ct["state"], ct["verdict"], ct["backend"]) == ("ct_unconfirmed_pod", "NEW", "kept", backend)
    assert doc["choice"]["by"] == "conntrack" and doc["tcp_flags"] == A and doc["reason"] == "ct_hit"
    # the ACK confirms it (run through the program by the command itself)
    out = svcctl(tmp_path, "trace", "--node", node, "10.1.0.5:41000", f"{VIP}:80", "--run")
    assert "this packet confirms the flow" in out and "as predicted" in out, out
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "10.1.0.5:41000", f"{VIP}:80", "-o", "json"))
    assert (doc["conntrack"]["table"], doc["conntrack"]["state"]) == ("conntrack", "ESTABLISHED")
    # the client's FIN half-closes it (the backend may still answer: the half-close
    # timeout, an hour); then a bare SYN, which does not look at the confirmed entry
    # (bpf/conntrack.h), is a new connection balanced anew (rr: the next slot)
    run(maps, trace(maps, Packet("10.1.0.5", 41000, VIP, 80, "TCP", F)))
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "10.1.0.5:41000", f"{VIP}:80", "-o", "json"))
    assert doc["conntrack"]["state"] == "HALF-CLOSED" and 3500 < doc["conntrack"]["remaining_s"] <= 3600
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "10.1.0.5:41000", f"{VIP}:80", "--tcp-flags", "S",
                            "-o", "json", "--run"))
    assert doc["conntrack"] is None and any("bare SYN" in n for n in doc["notes"]), doc
    assert doc["choice"]["by"] == "rr" and doc["run"]["agrees"] and doc["run"]["dst"] != backend
    # a backend's reply is traced as the reverse NAT of that flow
    reply = json.loads(svcctl(tmp_path, "trace", "--node", node, f"{doc['run']['dst'][0]}:8080",
                              "10.1.0.5:41000", "-o", "json", "--run"))
    assert reply["frontend"] is None and reply["reply_of"] == [VIP, 80] and reply["reason"] == "revnat"
    assert reply["run"]["src"] == [VIP, 80] and reply["run"]["agrees"]


def test_trace_of_a_service_without_endpoints_and_of_no_service(xdp: Harness, maps: PinnedMaps, tmp_path: Path):
    import json
    xdp.writer.upsert(ServiceState(Frontend(VIP, 81, "UDP"), (), "random"))
    node = maps.pin_dir.name
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "10.1.0.5", f"{VIP}:81/udp", "--run", "-o", "json"))
    assert (doc["verdict"], doc["reason"], doc["run"]["verdict"], doc["run"]["icmp_type"], doc["run"]["agrees"]) == \
        ("XDP_TX|XDP_DROP", "reject", "XDP_TX", 3, True)   # (dropped: over the CPU's reject budget)
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "10.1.0.5", "10.9.9.9:80", "--run", "-o", "json"))
    assert (doc["frontend"], doc["verdict"], doc["run"]["verdict"], doc["run"]["agrees"]) == \
        (None, "XDP_PASS", "XDP_PASS", True)
    # no reject for a source that is no single host, nor for TCP flags no flow starts with
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "224.0.0.9", f"{VIP}:81/udp", "--run", "-o", "json"))
    assert (doc["verdict"], doc["reason"], doc["run"]["verdict"], doc["run"]["agrees"]) == \
        ("XDP_DROP", "drop_malformed", "XDP_DROP", True)
    xdp.writer.upsert(ServiceState(Frontend(VIP, 82, "TCP"), (), "random"))
    doc = json.loads(svcctl(tmp_path, "trace", "--node", node, "10.1.0.5", f"{VIP}:82", "--tcp-flags", "FA",
                            "--run", "-o", "json"))
    assert (doc["verdict"], doc["reason"], doc["run"]["verdict"], doc["run"]["agrees"]) == \
        ("XDP_DROP", "drop_malformed", "XDP_DROP", True)


def test_get_flows_lists_the_conntrack_tables(xdp: Harness, maps: PinnedMaps, tmp_path: Path):
    """Known flows, made by sending packets through the program: TCP ones left new
    (SYN only), established (SYN, ACK), half-closed (then the client's FIN) and closing
    (then a RST); UDP ones new (one datagram) and established (two). The command must
    list exactly those."""
    import json
    xdp.writer.upsert(service("rr"))
    xdp.writer.upsert(service("sh", protocol="UDP"))
    want = {}
    sequences = {("10.2.0.1", 1001, "TCP"): [S], ("10.2.0.2", 1002, "TCP"): [S, A],
                 ("10.2.0.3", 1003, "TCP"): [S, A, F], ("10.2.0.4", 1004, "TCP"): [S, A],
                 ("10.2.0.5", 1005, "UDP"): [None], ("10.2.0.6", 1006, "UDP"): [None, None],
                 ("10.2.0.7", 1007, "TCP"): [S, A, R]}
    states = {1: "NEW", 2: "ESTABLISHED", 3: "HALF-CLOSED"}
    for (client, port, proto), flags in sequences.items():
        for f in flags:
            got = run(maps, trace(maps, Packet(client, port, VIP, 80, proto, f)))
        table = "ct_unconfirmed_pod" if len(flags) == 1 else "conntrack"
        want[(client, port)] = (proto, table, "CLOSING" if flags[-1] == R else states[len(flags)], list(got.dst))
    doc = json.loads(svcctl(tmp_path, "get", "flows", "--node", maps.pin_dir.name, "-o", "json"))
    listed = {(f["client"]["ip"], f["client"]["port"]):
              (f["protocol"], f["table"], f["state"], [f["backend"]["ip"], f["backend"]["port"]])
              for f in doc["flows"]}
    assert listed == want
    assert all(f["frontend"] == {"ip": VIP, "port": 80} and f["snat"] is None for f in doc["flows"])
    assert doc["entries"]["conntrack"]["forward"] == 5 and doc["entries"]["ct_unconfirmed_pod"]["forward"] == 2
    # filters, and the table (one row per flow)
    out = svcctl(tmp_path, "get", "flows", "--node", maps.pin_dir.name, "--protocol", "udp")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert sorted((r[0], r[1], r[5]) for r in rows) == [("UDP", "10.2.0.5:1005", "NEW"),
                                                        ("UDP", "10.2.0.6:1006", "ESTABLISHED")]
    out = svcctl(tmp_path, "get", "flows", "--node", maps.pin_dir.name, "--client", "10.2.0.3", "-o", "wide")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[1], r[2], r[3], r[5], r[9]) for r in rows] == [
        ("10.2.0.3:1003", f"{VIP}:80", "{}:{}".format(*want[("10.2.0.3", 1003)][3]), "HALF-CLOSED", "confirmed")]
    backend = "{}:{}".format(*want[("10.2.0.2", 1002)][3])
    out = svcctl(tmp_path, "get", "flows", "--node", maps.pin_dir.name, "--backend", backend, "--no-headers")
    assert {line.split()[1] for line in out.splitlines()} == \
        {f"{c}:{p}" for (c, p), w in want.items() if "{}:{}".format(*w[3]) == backend}


def test_nodeport_flow_through_the_external_entry_shows_its_source_nat(xdp: Harness, maps: PinnedMaps,
                                                                       tmp_path: Path):
    """A NodePort flow to a pod on another node, traced and run on the external entry point
    inside a namespace with the node's routes (nodenet.py): the trace says SNAT is decided
    by the route; once the flow exists, trace and `get flows` show its node address:port;
    once the backend has left the service, its late answer passes before the reply tail."""
    import json

    from . import nodenet
    client, node_ip, pod = list(nodenet.CLIENTS)[0], nodenet.NODE_IP, nodenet.REMOTE_POD
    node = nodenet.create()
    try:
        xdp.writer.upsert(ServiceState(Frontend(node_ip, 30080, "TCP", "external"), (Backend(pod, 80),), "random"))
        t = trace(maps, Packet(client, 40000, node_ip, 30080, "TCP", S))
        assert (t.entry, t.frontend.frontend.scope, t.verdict, t.rewrite.dst) == \
            ("external", "external", "XDP_PASS|XDP_TX|XDP_REDIRECT", (pod, 80)) and t.rewrite.snat
        r = node.call(run, maps, t, node.ext_ifindex)
        assert (r.verdict, r.src, r.dst) == ("XDP_TX", (node_ip, 32768 + (40000 & 32767)), (pod, 80))
        t = trace(maps, Packet(client, 40000, node_ip, 30080, "TCP"))       # the next packet: an ACK
        assert (t.conntrack.snat, t.rewrite.src, t.rewrite.dst, t.verdict) == (r.src, r.src, (pod, 80), "XDP_TX|XDP_PASS")
        again = node.call(run, maps, t, node.ext_ifindex)
        assert (again.verdict, again.src, again.dst) == ("XDP_TX", r.src, (pod, 80))
        # the backend's answer comes back to the node's SNAT port: both translations reversed
        t = trace(maps, Packet(pod, 80, node_ip, r.src[1], "TCP", S | A), entry="external")
        assert (t.reason, t.rewrite.src, t.rewrite.dst) == ("snat_reply", (node_ip, 30080), (client, 40000))
        back = node.call(run, maps, t, node.ext_ifindex)
        assert (back.verdict, back.src, back.dst) == ("XDP_TX", (node_ip, 30080), (client, 40000))
        doc = json.loads(svcctl(tmp_path, "get", "flows", "--node", maps.pin_dir.name, "-o", "json"))
        assert [(f["client"], f["frontend"], f["backend"], f["snat"], f["table"], f["state"]) for f in doc["flows"]] == [
            ({"ip": client, "port": 40000}, {"ip": node_ip, "port": 30080}, {"ip": pod, "port": 80},
             {"ip": node_ip, "port": r.src[1]}, "conntrack", "ESTABLISHED")]
        assert doc["entries"]["conntrack"]["snat"] == 1
        # once the service's backend is another, the old one's late answer is nobody's
        xdp.writer.upsert(ServiceState(Frontend(node_ip, 30080, "TCP", "external"), (Backend("10.244.2.12", 80),),
                                       "random"))
        t = trace(maps, Packet(pod, 80, node_ip, r.src[1], "TCP", A), entry="external")
        assert (t.reason, t.verdict, t.rewrite) == ("pass_non_service", "XDP_PASS", None), t
        late = node.call(run, maps, t, node.ext_ifindex)
        assert (late.verdict, late.src, late.dst) == ("XDP_PASS", (pod, 80), (node_ip, r.src[1]))
    finally:
        nodenet.delete(node)


def test_trace_of_a_flow_whose_backend_left_and_of_a_large_lc_service(xdp: Harness, maps: PinnedMaps):
    """A flow whose backend was removed is re-picked (stale); lc over more slots than it
    scans samples a random window: the trace gives the window winners, the run is one."""
    xdp.writer.upsert(service("rr"))
    p = Packet("10.3.0.1", 2000, VIP, 80, "TCP", S)
    first = run(maps, trace(maps, p))
    run(maps, trace(maps, Packet("10.3.0.1", 2000, VIP, 80, "TCP", A)))
    s = service("rr")
    xdp.writer.upsert(ServiceState(s.frontend, tuple(b for b in s.backends if b.ip != first.dst[0]), "rr"))
    t = trace(maps, Packet("10.3.0.1", 2000, VIP, 80, "TCP", A))
    assert (t.conntrack.verdict, t.conntrack.state, t.choice.by, t.reason) == ("stale", "STALE", "rr", "ct_new")
    again = run(maps, t)
    assert again.dst == t.rewrite.dst != first.dst
    many = tuple(f"10.244.{4 + i // 200}.{10 + i % 200}" for i in range(40))
    xdp.writer.upsert(ServiceState(Frontend(VIP, 82, "TCP"), tuple(Backend(ip, 8080) for ip in many), "wlc"))
    rng = random.Random("lc-window")
    packets = [Packet(socket.inet_ntoa(struct.pack("!I", rng.getrandbits(32))), rng.randrange(1024, 65536),
                      VIP, 82, "TCP", S) for _ in range(300)]
    by = compare(maps, packets)
    assert by == {"wlc": 300}


def test_trace_of_a_half_closed_flows_reply_kept_past_its_timeout(xdp: Harness, maps: PinnedMaps):
    """A shared backend's reply entry, closed by the backend's FIN and past its timeout,
    still serves while the half-closed flow's forward entry lives (bpf/conntrack.h
    ct_reply_kept): trace says so, as the program does (it called the reply expired)."""
    from controlplane.dataplane.affinity_maps import coarse_now_ns
    pods = ("10.2.7.1", "10.2.7.2")
    for vip in (VIP, "10.96.7.2"):   # two services on the same pods: reply entries
        xdp.writer.upsert(ServiceState(Frontend(vip, 80, "TCP"), tuple(Backend(ip, 8080) for ip in pods), "rr"))
    client = ("10.1.0.9", 41900)
    pod = run(maps, trace(maps, Packet(*client, VIP, 80, "TCP", S))).dst[0]
    run(maps, trace(maps, Packet(pod, 8080, *client, "TCP", S | A)))
    run(maps, trace(maps, Packet(*client, VIP, 80, "TCP", A)))
    run(maps, trace(maps, Packet(pod, 8080, *client, "TCP", F | A)))    # the backend has said all
    table = xdp.dp.table("conntrack")
    for k, v in list(table.items()):   # a pause past the close timeout
        v.last_seen = coarse_now_ns() - (xdp.dp.config.tcp_close_timeout_s + 2) * 10**9
        table[k] = v
    t = trace(maps, Packet(pod, 8080, *client, "TCP", A))
    r = run(maps, t)
    assert (t.reason, t.reply_of, r.src) == ("revnat", (VIP, 80), (VIP, 80)), t.notes
    assert any("ct_reply_kept" in n for n in t.notes)


def test_trace_of_load_balancer_source_ranges(xdp: Harness, maps: PinnedMaps):
    """loadBalancerSourceRanges are checked on a new flow from outside before a backend is
    chosen: a client outside them is dropped (predicted from the LPM trie), one inside is not."""
    from . import nodenet
    lb_ip, inside, outside = "192.168.1.240", "192.168.1.100", "192.168.1.101"
    node = nodenet.create()
    try:
        xdp.writer.upsert(ServiceState(Frontend(lb_ip, 80, "TCP", "external"), (Backend(nodenet.LOCAL_POD, 80),),
                                       "random", source_ranges=(f"{inside}/32",)))
        for client, verdict in ((outside, "XDP_DROP"), (inside, "XDP_PASS")):
            t = trace(maps, Packet(client, 40000, lb_ip, 80, "TCP", S))
            assert t.frontend.source_ranges and (t.verdict == verdict) == (verdict == "XDP_DROP"), t
            r = node.call(run, maps, t, node.ext_ifindex)
            assert r.verdict == verdict and (verdict == "XDP_DROP") == (t.reason == "drop_source_range"), (t, r)
            assert r.verdict in t.verdict.split("|")
    finally:
        nodenet.delete(node)


# ---- where a packet arrives when --entry is not given: told by the source's pod or node ----
NODE_IP, NODE2_IP = "192.168.1.31", "192.168.1.32"
LOCAL_CLIENT, REMOTE_POD, OUTSIDE = "10.244.1.3", "10.244.2.4", "192.168.1.100"


def add_pod(store, name: str, ip: str, node: str, host_ip: str) -> None:
    """A running pod as the lab's kubelet records it (spec.nodeName, status.podIP/hostIP)."""
    from controlplane.api.pod import Pod
    store.create(Pod.from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost"}]},
                                "status": {"phase": "Running", "podIP": ip, "hostIP": host_ip}}))


def snat_flow(xdp: Harness, client: Address, frontend: Address, backend: Address, snat_port: int) -> None:
    """A confirmed NodePort flow source-NATed to another node's pod, as nodeport.h records it
    (test_ctgc.snat_flow): the client's forward entry and the SNAT entry its replies meet."""
    from controlplane.dataplane.affinity_maps import coarse_now_ns
    from controlplane.dataplane.flows import F_SNAT, ip_be32, port_be16
    from controlplane.dataplane.trace import DIR_FORWARD, DIR_SNAT
    t, now = xdp.dp.table("conntrack"), coarse_now_ns()
    t[t.Key(src=ip_be32(client[0]), dst=ip_be32(frontend[0]), sport=port_be16(client[1]),
            dport=port_be16(frontend[1]), proto=socket.IPPROTO_TCP, dir=DIR_FORWARD)] = \
        t.Leaf(last_seen=now, nat_ip=ip_be32(backend[0]), nat_port=port_be16(backend[1]), flags=F_SNAT,
               peer_ip=ip_be32(NODE_IP), peer_port=port_be16(snat_port))
    t[t.Key(src=ip_be32(backend[0]), dst=ip_be32(NODE_IP), sport=port_be16(backend[1]),
            dport=port_be16(snat_port), proto=socket.IPPROTO_TCP, dir=DIR_SNAT)] = \
        t.Leaf(last_seen=now, nat_ip=ip_be32(frontend[0]), nat_port=port_be16(frontend[1]),
               peer_ip=ip_be32(client[0]), peer_port=port_be16(client[1]))


def test_the_default_entry_is_told_by_the_source(xdp: Harness, maps: PinnedMaps, store, tmp_path: Path):
    """QA's 2-node lab: the traced node (this pin) has the client pod, node2 the only
    endpoint. A pod's SYN to an eTP-Local NodePort comes in on its veth and meets the
    cluster-scope twin (every endpoint), not the external entry that drops it; node2's pod
    answering a source-NATed flow comes in from the wire, to a port that is no frontend."""
    import json
    node = maps.pin_dir.name
    add_pod(store, "client", LOCAL_CLIENT, node, NODE_IP)
    add_pod(store, "web-0", REMOTE_POD, "node2", NODE2_IP)
    web = (Backend(REMOTE_POD, 80),)
    xdp.writer.upsert(ServiceState(Frontend(NODE_IP, 30090, "TCP", "external"), (), "random", local_drop=True))
    xdp.writer.upsert(ServiceState(Frontend(NODE_IP, 30090, "TCP"), web, "random"))
    for scope in ("external", "cluster"):
        xdp.writer.upsert(ServiceState(Frontend(NODE_IP, 30091, "TCP", scope), web, "random"))
    snat_flow(xdp, (OUTSIDE, 40004), (NODE_IP, 30091), (REMOTE_POD, 80), 50004)

    def traced(*args: str) -> dict:
        return json.loads(svcctl(tmp_path, "trace", "--node", node, *args, "-o", "json"))

    doc = traced(f"{LOCAL_CLIENT}:53002", f"{NODE_IP}:30090")
    assert (doc["entry"], doc["frontend"]["scope"], doc["reason"]) == ("pod", "cluster", "ct_new"), doc
    assert doc["rewrite"]["dst"] == [REMOTE_POD, 80]
    assert doc["entry_reason"] == f"SRC is pod default/client on {node}"
    doc = traced(f"{REMOTE_POD}:80", f"{NODE_IP}:50004", "--tcp-flags", "SA")
    assert (doc["entry"], doc["reason"], doc["reply_of"]) == ("external", "snat_reply", [NODE_IP, 30091]), doc
    assert doc["rewrite"]["dst"] == [OUTSIDE, 40004]
    assert doc["entry_reason"] == "SRC is pod default/web-0 on node2, another node"
    # another node's address comes in from the wire too, whatever it is sent to
    doc = traced(f"{NODE2_IP}:41000", f"{LOCAL_CLIENT}:8080")
    assert (doc["entry"], doc["entry_reason"]) == ("external", "SRC is an address of node2, another node"), doc
    # a source the store does not know: the destination tells, as before; --entry overrides
    doc = traced(f"{OUTSIDE}:41000", f"{NODE_IP}:30090")
    assert (doc["entry"], doc["reason"]) == ("external", "drop_no_local"), doc
    assert traced(f"{OUTSIDE}:41000", f"{NODE_IP}:30090", "--entry", "pod")["entry"] == "pod"
    assert traced(f"{LOCAL_CLIENT}:53002", f"{NODE_IP}:30090", "--entry", "external")["reason"] == "drop_no_local"
    out = svcctl(tmp_path, "trace", "--node", node, f"{LOCAL_CLIENT}:53002", f"{NODE_IP}:30090")
    assert "arriving on a pod interface (svcxdp_main)" in out and \
        f"SRC is pod default/client on {node}" in out, out
