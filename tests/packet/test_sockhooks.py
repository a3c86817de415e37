"""The cgroup socket hooks (bpf/sock.h) run for real: sockets made in a test cgroup
connect to / send to a ClusterIP inside a test namespace, and the kernel's own
connect(), sendto(), recvfrom() and getpeername() are checked against the maps and
the control plane's prediction (controlplane.dataplane.predict), for AF_INET sockets
and AF_INET6 ones naming the IPv4-mapped address (::ffff:VIP)."""
from __future__ import annotations

import errno
import ipaddress
import socket
import sys

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane import readout
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.predict import predict
from controlplane.dataplane.sockhooks import HOOKS, attached_ids, own_netns_cookie
from controlplane.lab import netns

from .harness import CLIENT_MAC, NODE_MAC, Harness, delta
from .sockenv import CLIENT_IP, TCP_PORT, UDP_PORT, SockEnv, mapped, sock_env
from .test_trace import maps  # noqa: F401 (the fixture: the maps pinned, as svcctl trace opens them)

VIP = "10.96.0.100"
MVIP = mapped(VIP)      # ::ffff:VIP, as an AF_INET6 socket names it
V6 = socket.AF_INET6
BACKENDS = ("10.244.2.11", "10.244.2.12", "10.244.2.13")
TCP_P, UDP_P = socket.IPPROTO_TCP, socket.IPPROTO_UDP
SO_COOKIE = 57   # <asm-generic/socket.h>; not in Python's socket module


def cookie(s: socket.socket) -> int:
    """The socket's cookie, as the hooks (bpf_get_socket_cookie) and sock_diag see it."""
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), sys.byteorder)


@pytest.fixture(scope="module")
def env(loaded_dataplane):
    hooks = loaded_dataplane.sock_hooks
    with sock_env(BACKENDS) as e:
        hooks.attach(e.cgroup)
        # the test namespace stands for the node's (the agent's, where it runs)
        loaded_dataplane.set_sock_config(CLIENT_IP, netns.call_in(e.ns, own_netns_cookie))
        yield e


@pytest.fixture
def sk(xdp: Harness, env: SockEnv):
    affinity = xdp.dp.table("affinity")
    for k in list(affinity.keys()):
        del affinity[k]
    return xdp, env


def service(protocol: str = "TCP", port: int = 80, algorithm: str = "random", backends=BACKENDS,
            affinity_timeout: int = 0) -> ServiceState:
    bport = TCP_PORT if protocol == "TCP" else UDP_PORT
    return ServiceState(Frontend(VIP, port, protocol), tuple(Backend(ip, bport) for ip in backends),
                        algorithm, affinity_timeout=affinity_timeout)


def predictor(xdp: Harness, s: ServiceState):
    table = xdp.writer.maglev_table(s.frontend)
    ids = {b.address: xdp.writer.backend_id(s.frontend, b.ip, b.port) for b in s.backends}
    proto = TCP_P if s.frontend.protocol == "TCP" else UDP_P
    return lambda src, sport: predict(s, src, sport, VIP, s.frontend.port, proto, table, ids).ip



def _translated_per_socket(xdp, before: dict, frontend, n: int) -> None:
    """`n` connections to `frontend` were translated by the hooks and shown the service
    again, per socket, not per packet: the datapath's conntrack saw none of them."""
    d = delta(before, xdp.counters())
    assert d["sock_xlate"] == n and d["sock_revnat"] == n
    assert len(list(xdp.dp.table("conntrack").keys())) == 0
    assert xdp.dp.service_stats(xdp.writer.svc_id(frontend))["new_flows"] == n


def _remove_and_reap(xdp, env, first: str) -> None:
    """`first` leaves the UDP service; the reaper, told which addresses left (as the agent
    tells it), looks at those only, and aborts the one socket connected to `first`."""
    from controlplane.dataplane.sockreaper import reap
    xdp.writer.upsert(service("UDP", 53, "sh", backends=tuple(b for b in BACKENDS if b != first)))
    others = {(b, UDP_PORT) for b in BACKENDS if b != first} | {(first, UDP_PORT + 1)}
    assert netns.call_in(env.ns, reap, xdp.dp, others) == 0
    assert netns.call_in(env.ns, reap, xdp.dp, {(first, UDP_PORT)}) == 1

def test_hooks_are_attached_to_the_test_cgroup_only(sk, loaded_dataplane):
    _, env = sk
    ids = attached_ids(env.cgroup)
    assert all(len(v) == 1 for v in ids.values()), ids
    assert set(loaded_dataplane.sock_hooks.attached(env.cgroup).values()) == {True}
    assert len(ids) == len(HOOKS)


@pytest.mark.parametrize("algorithm", ["maglev", "sh"])
def test_connect_lands_on_the_predicted_backend_and_getpeername_shows_the_vip(sk, algorithm):
    xdp, env = sk
    s = service(algorithm=algorithm)
    xdp.writer.upsert(s)
    want = predictor(xdp, s)
    before = xdp.counters()
    seen = set()
    per_backend: dict[str, int] = {}
    for sport in range(41000, 41030):
        got, peer = env.tcp_backend(VIP, 80, bind_port=sport)
        assert got == want(CLIENT_IP, sport), f"source port {sport}"
        assert peer == (VIP, 80)
        seen.add(got)
        per_backend[got] = per_backend.get(got, 0) + 1
    # An unbound socket is keyed by the node's address (sock_config), port 0.
    got = env.tcp_backend(VIP, 80)[0]
    assert got == want(CLIENT_IP, 0)
    per_backend[got] = per_backend.get(got, 0) + 1
    # each connect() is a new flow of its backend (backend_stats, the metrics' per-backend spread)
    ids = {ip: xdp.writer.backend_id(s.frontend, ip, TCP_PORT) for ip in BACKENDS}
    counted = readout.backend_new_flows(xdp.dp)
    assert {ip: counted.get(bid, 0) for ip, bid in ids.items()} == {ip: per_backend.get(ip, 0) for ip in BACKENDS}
    if algorithm == "maglev":
        assert seen == set(BACKENDS)
    _translated_per_socket(xdp, before, s.frontend, 31)


def test_sockets_outside_the_cgroup_are_left_alone(sk):
    xdp, env = sk
    xdp.writer.upsert(service())
    with pytest.raises(OSError) as err:
        env.tcp_backend(VIP, 80, in_cgroup=False)
    assert err.value.errno == errno.ENETUNREACH   # the VIP itself: no route in the namespace


def test_unconnected_udp_selects_per_message_and_replies_come_from_the_vip(sk):
    xdp, env = sk
    xdp.writer.upsert(service("UDP", 53, "rr"))
    with env.socket(socket.SOCK_DGRAM) as u:
        got = []
        for i in range(9):
            u.sendto(b"q%d" % i, (VIP, 53))
            data, peer = u.recvfrom(2048)
            assert peer == (VIP, 53)
            backend, echoed = data.decode().split()
            assert echoed == f"q{i}"
            got.append(backend)
    # Round robin per message: one socket meets every backend, in a fixed cycle.
    assert set(got[:3]) == set(BACKENDS)
    assert got[3:6] == got[:3] and got[6:] == got[:3]


def test_connected_udp_getpeername_and_recvfrom_show_the_vip(sk):
    xdp, env = sk
    s = service("UDP", 53, "sh")
    xdp.writer.upsert(s)
    with env.socket(socket.SOCK_DGRAM, bind_port=42000) as u:
        u.connect((VIP, 53))
        assert u.getpeername() == (VIP, 53)
        u.send(b"hello")
        data, peer = u.recvfrom(2048)
    assert peer == (VIP, 53)
    assert data.decode().split() == [predictor(xdp, s)(CLIENT_IP, 42000), "hello"]


@pytest.mark.parametrize("family,vip", [(socket.AF_INET, VIP), (V6, MVIP)], ids=["ipv4", "mapped"])
def test_service_without_endpoints_refuses_at_once(sk, family, vip):
    """AF_INET, and AF_INET6 naming the IPv4-mapped VIP (::ffff:VIP) alike."""
    xdp, env = sk
    xdp.writer.upsert(service(backends=()))
    xdp.writer.upsert(service("UDP", 53, backends=()))
    before = xdp.counters()
    with pytest.raises(ConnectionRefusedError):
        env.tcp_backend(vip, 80)
    with env.socket(socket.SOCK_DGRAM, family=family) as u:
        with pytest.raises(ConnectionRefusedError):
            u.sendto(b"x", (vip, 53))
        with pytest.raises(ConnectionRefusedError):
            u.connect((vip, 53))
    assert delta(before, xdp.counters()) == {"sock_reject": 3}


def test_affinity_at_socket_level_is_the_xdp_paths_affinity(sk):
    xdp, env = sk
    s = service(algorithm="random", affinity_timeout=600)
    xdp.writer.upsert(s)
    first = env.tcp_backend(VIP, 80)[0]
    assert {env.tcp_backend(VIP, 80)[0] for _ in range(10)} == {first}
    # Bound to another source port: still the same client.
    assert env.tcp_backend(VIP, 80, bind_port=43000)[0] == first
    # The XDP path reads the same entry: a packet from the node's address meets it.
    out = xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT_IP, dst=VIP) /
                   TCP(sport=50000, dport=80, flags="S"))
    assert out.pkt[IP].dst == first


def test_removed_backend_is_reselected_by_the_next_connect(sk):
    xdp, env = sk
    s = service(algorithm="sh")
    xdp.writer.upsert(s)
    first = env.tcp_backend(VIP, 80, bind_port=44000)[0]
    rest = tuple(b for b in BACKENDS if b != first)
    xdp.writer.upsert(service(algorithm="sh", backends=rest))
    again = env.tcp_backend(VIP, 80, bind_port=44001)[0]
    assert again in rest


def test_connected_udp_of_a_removed_backend_is_aborted_and_reconnects_elsewhere(sk):
    from controlplane.dataplane.sockreaper import reap
    xdp, env = sk
    s = service("UDP", 53, "sh")
    xdp.writer.upsert(s)
    with env.socket(socket.SOCK_DGRAM, bind_port=45000) as u:
        u.connect((VIP, 53))
        u.send(b"a")
        first = u.recv(100).decode().split()[0]
        # Nothing to reap while the backend serves.
        assert netns.call_in(env.ns, reap, xdp.dp) == 0
        _remove_and_reap(xdp, env, first)
        with pytest.raises(ConnectionAbortedError):
            u.recv(100)
        u.connect((VIP, 53))
        u.send(b"b")
        again, echoed = u.recv(100).decode().split()
        assert again != first and echoed == "b"
        assert u.getpeername() == (VIP, 53)


def test_external_frontend_from_the_node_itself_and_on_loopback(sk):
    """A NodePort reached from the node: the agent writes each way in from outside twice,
    in the external scope (the external entry point's) and as a cluster-scope twin with
    what traffic from inside gets; the hooks find the twin, at the node's address and at
    127.0.0.1 (the same NodePort), and never the external entry, which may hold fewer
    backends (externalTrafficPolicy Local)."""
    import dataclasses
    xdp, env = sk
    s = service(algorithm="sh")
    outside_only = ServiceState(Frontend(CLIENT_IP, 30080, "TCP", "external"), s.backends[:1], "sh")
    twin = dataclasses.replace(s, frontend=Frontend(CLIENT_IP, 30080, "TCP", "cluster"))
    xdp.writer.upsert(outside_only)
    with pytest.raises(ConnectionRefusedError):   # no frontend for the node: nothing listens there
        env.tcp_backend(CLIENT_IP, 30080)
    xdp.writer.upsert(twin)
    # sh hashes the port the client addressed: the NodePort.
    want = predict(twin, CLIENT_IP, 0, CLIENT_IP, 30080, TCP_P).ip
    for addr in (CLIENT_IP, "127.0.0.1"):
        assert env.tcp_backend(addr, 30080) == (want, (addr, 30080))


def _lb_twin(source_ranges: tuple[str, ...], protocol: str = "TCP", port: int = 80) -> ServiceState:
    """VIP as a LoadBalancer IP's cluster-scope twin (the entry the hooks find) with
    loadBalancerSourceRanges."""
    import dataclasses
    return dataclasses.replace(service(protocol, port), source_ranges=source_ranges)


@pytest.mark.parametrize("family", [socket.AF_INET, V6], ids=["ipv4", "mapped"])
def test_the_node_s_sockets_meet_a_load_balancer_ip_s_source_ranges(sk, family):
    """kube-proxy filters the node's own packets to a LoadBalancer IP by its ranges: an
    unbound socket stands for the node's address (sock_config), a bound one for its
    own; outside the ranges connect() and sendto() fail at once (EPERM), counted as
    drop_source_range, with nothing chosen."""
    xdp, env = sk
    vip = VIP if family == socket.AF_INET else MVIP
    xdp.writer.upsert(_lb_twin(("10.244.9.0/24",)))                       # the node's address inside
    assert env.tcp_backend(vip, 80)[0] in BACKENDS
    xdp.writer.upsert(_lb_twin(("192.168.0.0/16",)))                      # outside
    xdp.writer.upsert(_lb_twin(("192.168.0.0/16",), "UDP", 53))
    svc_id = xdp.writer.svc_id(Frontend(VIP, 80, "TCP"))
    flows, before = xdp.dp.service_stats(svc_id)["new_flows"], xdp.counters()
    with pytest.raises(PermissionError):
        env.tcp_backend(vip, 80)
    with env.socket(socket.SOCK_DGRAM, family=family) as u:
        with pytest.raises(PermissionError):
            u.sendto(b"x", (vip, 53))
    assert delta(before, xdp.counters()) == {"drop_source_range": 2}
    assert xdp.dp.service_stats(svc_id)["new_flows"] == flows
    # a socket bound to an address inside the ranges gets in, though the node's is outside
    with env.address("192.168.7.7"):
        with env.socket(socket.SOCK_STREAM) as s:
            s.bind(("192.168.7.7", 0))
            s.connect((VIP, 80))
            assert s.recv(64).decode() in BACKENDS


def test_a_socket_from_the_load_balancer_ip_itself_gets_in_while_the_node_does(sk):
    """kube-proxy's allowFromNode: a node that holds the LB IP sends to it from that very
    address, let in when the node's address is inside the ranges (not the LB IP's)."""
    xdp, env = sk
    with env.address(VIP):
        xdp.writer.upsert(_lb_twin(("10.244.9.1/32",)))
        with env.socket(socket.SOCK_STREAM) as s:
            s.bind((VIP, 0))
            s.connect((VIP, 80))
            assert s.recv(64).decode() in BACKENDS
        xdp.writer.upsert(_lb_twin(("10.244.8.0/24",)))
        with env.socket(socket.SOCK_STREAM) as s:
            s.bind((VIP, 0))
            with pytest.raises(PermissionError):
                s.connect((VIP, 80))


@pytest.mark.parametrize("unknown", ["another namespace", "no node address"])
def test_a_socket_whose_source_is_not_known_is_left_to_its_packets(sk, loaded_dataplane, maps, unknown):
    """A pod's socket under the hooks (`lab up --socket-lb-pods`) is not the node's: its
    source is the pod's address, unknown before routing; nor is an unbound socket's of
    the node when the agent was not told the node's address (no --node-ip). A
    LoadBalancer IP with source ranges is then not translated, neither let in nor
    refused: its packets meet the ranges where they reach a svcxdp program. Here the test
    namespace is made another's by naming the test process's own as the node's, or the
    node's address is left out: the connect() goes on untranslated, to an address this
    namespace has no route to."""
    xdp, env = sk
    xdp.writer.upsert(_lb_twin(("192.168.0.0/16",)))
    if unknown == "another namespace":
        loaded_dataplane.set_sock_config(CLIENT_IP, own_netns_cookie())
    else:
        loaded_dataplane.set_sock_config(None, netns.call_in(env.ns, own_netns_cookie))
    try:
        before = xdp.counters()
        with pytest.raises(OSError) as err:
            env.tcp_backend(VIP, 80)
        assert err.value.errno == errno.ENETUNREACH
        assert delta(before, xdp.counters()) == {}
        if unknown == "no node address":   # (the trace assumes the node's namespace)
            from controlplane.dataplane.trace import Packet, trace
            t = trace(maps, Packet("0.0.0.0", 0, VIP, 80), "socket")
            assert (t.verdict, t.rewrite) == ("SOCK_ALLOW", None), t
        xdp.writer.upsert(service())   # a service without ranges: translated as ever
        assert env.tcp_backend(VIP, 80)[0] in BACKENDS
    finally:
        loaded_dataplane.set_sock_config(CLIENT_IP, netns.call_in(env.ns, own_netns_cookie))


ALGORITHMS_TRACED = ("maglev", "dh", "rr")


@pytest.mark.parametrize("algorithm", ALGORITHMS_TRACED)
def test_trace_of_a_node_socket_predicts_what_the_hooks_do(sk, maps, algorithm):
    """`svcctl trace --entry socket` against the hooks themselves: the backend a socket of
    the node is connected to (bound ports, and an unbound socket, SRC 0.0.0.0: the node's
    address, port 0), ClientIP affinity, a NodePort on loopback, a service without
    endpoints, a LoadBalancer IP whose ranges shut the node out but let a bound address in,
    and no service at all."""
    import dataclasses

    from controlplane.dataplane.trace import Packet, trace
    xdp, env = sk
    xdp.writer.upsert(service(algorithm=algorithm))
    for sport in (*range(46000, 46008), None):
        t = trace(maps, Packet(CLIENT_IP if sport else "0.0.0.0", sport or 0, VIP, 80), "socket")
        got = env.tcp_backend(VIP, 80, **({"bind_port": sport} if sport else {}))[0]
        assert (t.verdict, t.reason, t.rewrite.dst) == ("SOCK_ALLOW", "sock_xlate", (got, TCP_PORT)), sport
    xdp.writer.upsert(service(algorithm=algorithm, affinity_timeout=600))
    first = env.tcp_backend(VIP, 80)[0]
    t = trace(maps, Packet("0.0.0.0", 46100, VIP, 80), "socket")
    assert (t.affinity.verdict, t.choice.by, t.rewrite.dst) == ("hit", "affinity", (first, TCP_PORT))
    assert env.tcp_backend(VIP, 80, bind_port=46100)[0] == first
    twin = dataclasses.replace(service(algorithm=algorithm), frontend=Frontend(CLIENT_IP, 30080, "TCP", "cluster"))
    xdp.writer.upsert(twin)
    for sport in range(46010, 46020):   # dh: hashed over the node's address, not 127.0.0.1
        t = trace(maps, Packet(CLIENT_IP, sport, "127.0.0.1", 30080), "socket")
        assert t.frontend.frontend == twin.frontend
        assert t.rewrite.dst == (env.tcp_backend("127.0.0.1", 30080, bind_port=sport)[0], TCP_PORT), sport
    xdp.writer.upsert(service(backends=()))
    assert trace(maps, Packet(CLIENT_IP, 0, VIP, 80), "socket").verdict == "ECONNREFUSED"
    with pytest.raises(ConnectionRefusedError):
        env.tcp_backend(VIP, 80)
    xdp.writer.upsert(dataclasses.replace(service(algorithm=algorithm), source_ranges=("192.168.0.0/16",)))
    t = trace(maps, Packet("0.0.0.0", 0, VIP, 80), "socket")
    assert (t.verdict, t.reason) == ("EPERM", "drop_source_range")
    with pytest.raises(PermissionError):
        env.tcp_backend(VIP, 80)
    port = 46200 + ALGORITHMS_TRACED.index(algorithm)   # a tuple of its own (an earlier one may linger)
    t = trace(maps, Packet("192.168.7.7", port, VIP, 80), "socket")
    assert (t.verdict, t.reason) == ("SOCK_ALLOW", "sock_xlate")
    with env.address("192.168.7.7"), env.socket(socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("192.168.7.7", port))
        s.connect((VIP, 80))
        assert (s.recv(64).decode(), TCP_PORT) == t.rewrite.dst
    t = trace(maps, Packet(CLIENT_IP, 0, "10.96.0.99", 80), "socket")
    assert (t.frontend, t.verdict, t.rewrite) == (None, "SOCK_ALLOW", None)


def test_svcctl_trace_entry_socket(sk, maps, tmp_path):
    """The command: an unbound socket by default (port 0), what it connects to, and
    --run refused with the reason (a cgroup hook is no packet's program)."""
    from .test_trace import svcctl
    xdp, env = sk
    xdp.writer.upsert(service(algorithm="dh"))
    args = ("trace", "--node", maps.pin_dir.name, CLIENT_IP, f"{VIP}:80", "--entry", "socket")
    out = svcctl(tmp_path, *args)
    backend = env.tcp_backend(VIP, 80)[0]
    assert f"TCP {CLIENT_IP}:0 -> {VIP}:80, a socket of" in out, out
    assert f"becomes  {CLIENT_IP}:0 -> {backend}:{TCP_PORT}" in out and "SOCK_ALLOW (sock_xlate)" in out, out
    assert f"an unbound one stands for the node's address, {CLIENT_IP}" in out, out
    assert "BPF_PROG_TEST_RUN cannot run them" in svcctl(tmp_path, *args, "--run", rc=1)
    assert "carries no TCP flags" in svcctl(tmp_path, *args, "--tcp-flags", "S", rc=1)


# AF_INET6 sockets naming IPv4-mapped addresses (::ffff:VIP), as dual-stack Java, Node.js
# and Go clients do: connect6 / recvmsg6 / getpeername6 run the IPv4 code on the mapped
# address (sendmsg of a mapped destination reaches sendmsg4: the kernel hands it to
# udp_sendmsg); any other IPv6 address is left alone (MVIP, V6 above).


def test_mapped_tcp_connect_lands_on_the_predicted_backend_and_getpeername_shows_the_mapped_vip(sk):
    xdp, env = sk
    s = service(algorithm="maglev")
    xdp.writer.upsert(s)
    want = predictor(xdp, s)
    before = xdp.counters()
    seen = set()
    for sport in range(41100, 41120):
        # Bound to ::ffff:CLIENT_IP: keyed by CLIENT_IP and the port, as an AF_INET socket.
        got, peer = env.tcp_backend(MVIP, 80, bind_port=sport)
        assert got == want(CLIENT_IP, sport), f"source port {sport}"
        assert peer == (MVIP, 80, 0, 0)
        seen.add(got)
    got, peer = env.tcp_backend(MVIP, 80)   # unbound: the node's address, port 0
    assert got == want(CLIENT_IP, 0) and peer == (MVIP, 80, 0, 0)
    assert len(seen) > 1
    _translated_per_socket(xdp, before, s.frontend, 21)


def test_mapped_nodeport_on_loopback(sk):
    """`::ffff:127.0.0.1:<NodePort>` is the NodePort on the node's address, as 127.0.0.1 is."""
    import dataclasses
    xdp, env = sk
    s = service(algorithm="sh")
    twin = dataclasses.replace(s, frontend=Frontend(CLIENT_IP, 30080, "TCP", "cluster"))
    xdp.writer.upsert(twin)
    want = predict(twin, CLIENT_IP, 0, CLIENT_IP, 30080, TCP_P).ip
    for addr in (mapped(CLIENT_IP), mapped("127.0.0.1")):
        assert env.tcp_backend(addr, 30080) == (want, (addr, 30080, 0, 0))


def test_mapped_connected_udp_getpeername_and_recvfrom_show_the_mapped_vip(sk):
    xdp, env = sk
    s = service("UDP", 53, "sh")
    xdp.writer.upsert(s)
    with env.socket(socket.SOCK_DGRAM, bind_port=42100, family=V6) as u:
        u.connect((MVIP, 53))
        assert u.getpeername() == (MVIP, 53, 0, 0)
        u.send(b"hello")
        data, peer = u.recvfrom(2048)
        # Sends of a socket connected to a mapped address name it to udp_sendmsg, so
        # sendmsg4 sees the backend on each: no service, left as it is.
        u.send(b"again")
        data2, _ = u.recvfrom(2048)
    assert peer == (MVIP, 53, 0, 0)
    backend = predictor(xdp, s)(CLIENT_IP, 42100)
    assert data.decode().split() == [backend, "hello"]
    assert data2.decode().split() == [backend, "again"]


def test_mapped_connected_udp_of_a_removed_backend_is_aborted_and_native_ipv6_is_left_alone(sk):
    """The reaper dumps AF_INET6 sockets too: one connected to ::ffff:VIP (translated by
    connect6) is found by the IPv4 address in its destination's last 4 bytes and
    destroyed by its AF_INET6 sockid, as an AF_INET one; a native IPv6 socket whose
    destination ends in the same 4 bytes and port is not, even with a sock_revnat entry
    for its cookie and that address (which the hooks never write: the mapped prefix is
    what tells the two apart)."""
    from controlplane.dataplane.sockreaper import reap
    xdp, env = sk
    s = service("UDP", 53, "sh")
    xdp.writer.upsert(s)
    first = predictor(xdp, s)(CLIENT_IP, 45100)
    native_ip = str(ipaddress.IPv6Address(f"fd00::{first}"))   # e.g. fd00::af4:20b (10.244.2.11)
    revnat = xdp.dp.table("sock_revnat")
    with env.address(native_ip), \
            env.socket(socket.SOCK_DGRAM, in_cgroup=False, family=V6) as usrv, \
            env.socket(socket.SOCK_DGRAM, bind_port=45100, family=V6) as u, \
            env.socket(socket.SOCK_DGRAM, family=V6) as native:
        usrv.bind((native_ip, UDP_PORT))
        native.connect((native_ip, UDP_PORT))

        def native_echoes(data: bytes) -> bool:
            native.send(data)
            got, peer = usrv.recvfrom(64)
            usrv.sendto(got, peer)
            return native.recv(64) == data

        assert native_echoes(b"n1")
        u.connect((MVIP, 53))
        u.send(b"a")
        assert u.recv(100).decode().split() == [first, "a"]
        # What connect6 recorded for the mapped socket, given to the native one too.
        key = revnat.Key(cookie(u), int.from_bytes(socket.inet_aton(first), "little"),
                         int.from_bytes(UDP_PORT.to_bytes(2, "big"), "little"), UDP_P, 0)
        rv = revnat[key]
        forged = revnat.Key(cookie(native), key.ip, key.port, UDP_P, 0)
        revnat[forged] = rv
        try:
            assert netns.call_in(env.ns, reap, xdp.dp) == 0
            _remove_and_reap(xdp, env, first)
            with pytest.raises(ConnectionAbortedError):
                u.recv(100)
            assert key not in revnat
            # A whole sweep: nothing else to abort; the native socket is still connected.
            assert netns.call_in(env.ns, reap, xdp.dp) == 0
            assert native_echoes(b"n2")
            assert native.getpeername() == (native_ip, UDP_PORT, 0, 0)
            u.connect((MVIP, 53))
            u.send(b"b")
            again, echoed = u.recv(100).decode().split()
            assert again != first and echoed == "b"
            assert u.getpeername() == (MVIP, 53, 0, 0)
        finally:
            try:
                del revnat[forged]
            except KeyError:
                pass


def test_mapped_unconnected_udp_selects_per_message_and_replies_come_from_the_mapped_vip(sk):
    xdp, env = sk
    xdp.writer.upsert(service("UDP", 53, "rr"))
    before = xdp.counters()
    with env.socket(socket.SOCK_DGRAM, family=V6) as u:
        got = []
        for i in range(6):
            u.sendto(b"q%d" % i, (MVIP, 53))
            data, peer = u.recvfrom(2048)
            assert peer == (MVIP, 53, 0, 0)
            backend, echoed = data.decode().split()
            assert echoed == f"q{i}"
            got.append(backend)
    assert set(got[:3]) == set(BACKENDS) and got[3:] == got[:3]
    d = delta(before, xdp.counters())
    assert d["sock_xlate"] == 6 and d["sock_revnat"] == 6


def test_mapped_tcp_connection_gives_its_count_back_at_close(sk):
    """sock_release finds an AF_INET6 socket's translation by its IPv4 destination (the
    kernel keeps it in skc_daddr for a mapped peer, as for an AF_INET socket)."""
    xdp, env = sk
    s = service(algorithm="lc", backends=BACKENDS[:1])
    xdp.writer.upsert(s)
    conns = xdp.dp.table("backend_conns")
    bid = xdp.writer.backend_id(s.frontend, BACKENDS[0], TCP_PORT)
    start = conns[conns.Key(bid)].value
    with env.socket(socket.SOCK_STREAM, family=V6) as t:
        t.connect((MVIP, 80))
        assert t.recv(64).decode() == BACKENDS[0]
        assert conns[conns.Key(bid)].value == start + 1
    assert conns[conns.Key(bid)].value == start


def _conns(xdp, bid: int) -> int:
    """A backend's connection count as stored (signed: below zero shows)."""
    import ctypes
    conns = xdp.dp.table("backend_conns")
    return ctypes.c_int32(conns[conns.Key(bid)].value).value


def test_a_recount_keeps_the_connections_the_hooks_counted(sk):
    """The agent's consistency check recounts the lc family's counts (verify.py); it read
    conntrack only, so every connection the hooks had counted was zeroed while open, and
    each close then took its backend's count below zero."""
    xdp, env = sk
    s = service(algorithm="lc", backends=BACKENDS[:2])
    xdp.writer.upsert(s)
    ids = [xdp.writer.backend_id(s.frontend, b, TCP_PORT) for b in BACKENDS[:2]]
    open_ = []
    try:
        for _ in range(4):
            t = env.socket(socket.SOCK_STREAM)
            open_.append(t)
            t.connect((VIP, 80))
        assert [_conns(xdp, bid) for bid in ids] == [2, 2]
        assert xdp.writer.recount_connections() == 0
        assert [_conns(xdp, bid) for bid in ids] == [2, 2]
    finally:
        for t in open_:
            t.close()
    assert [_conns(xdp, bid) for bid in ids] == [0, 0]


def test_a_closed_socket_gives_its_count_back_only_to_the_backend_it_took_it_from(sk):
    """The writer hands a removed backend's id to another backend; a socket still open to
    the old one gave its count back to the new one at close (ct_uncount checks this for
    flows). Here the id's backend entry is rewritten as the writer would for another
    service's backend, holding one connection of its own."""
    xdp, env = sk
    s = service(algorithm="lc", backends=BACKENDS[:1])
    xdp.writer.upsert(s)
    bid = xdp.writer.backend_id(s.frontend, BACKENDS[0], TCP_PORT)
    backends, conns = xdp.dp.table("backends"), xdp.dp.table("backend_conns")
    mine = backends[backends.Key(bid)]
    other = type(mine).from_buffer_copy(mine)
    other.svc_id += 1000                              # another service's backend now
    try:
        with env.socket(socket.SOCK_STREAM) as t:
            t.connect((VIP, 80))
            assert _conns(xdp, bid) == 1
            backends[backends.Key(bid)] = other
            conns[conns.Key(bid)] = conns.Leaf(1)     # with a connection of its own
        assert _conns(xdp, bid) == 1
    finally:
        backends[backends.Key(bid)] = mine
        conns[conns.Key(bid)] = conns.Leaf(0)


def test_ipv6_destinations_other_than_mapped_ones_are_left_alone(sk):
    """Only ::ffff:0:0/96 is taken as IPv4: an IPv6 address whose low 32 bits are the VIP
    is not the service, and a native IPv6 peer (::1) is neither translated nor rewritten."""
    xdp, env = sk
    xdp.writer.upsert(service())
    xdp.writer.upsert(service("UDP", 53))
    before = xdp.counters()
    for addr in (f"fd00::{VIP}", f"64:ff9b::{VIP}", f"::{VIP}"):
        with pytest.raises(OSError) as err:
            env.tcp_backend(addr, 80)
        assert err.value.errno == errno.ENETUNREACH, addr   # no route to it
    # (translating the low word alone would leave the prefix, unreachable too: counted)
    assert delta(before, xdp.counters()) == {}
    # A mapped address that is no service: reached as it is.
    assert env.tcp_backend(mapped(BACKENDS[0]), TCP_PORT) == (BACKENDS[0], (mapped(BACKENDS[0]), TCP_PORT, 0, 0))
    # Native IPv6, TCP and UDP, to servers on ::1.
    with env.socket(socket.SOCK_STREAM, in_cgroup=False, family=V6) as lsn, \
            env.socket(socket.SOCK_DGRAM, in_cgroup=False, family=V6) as usrv:
        lsn.bind(("::1", 0))
        lsn.listen(4)
        usrv.bind(("::1", 0))
        tport, uport = lsn.getsockname()[1], usrv.getsockname()[1]
        with env.socket(socket.SOCK_STREAM, family=V6) as c:
            c.connect(("::1", tport))
            conn, _ = lsn.accept()
            conn.close()
            assert c.getpeername() == ("::1", tport, 0, 0)
        with env.socket(socket.SOCK_DGRAM, family=V6) as u:
            u.sendto(b"ping", ("::1", uport))
            data, peer = usrv.recvfrom(64)
            usrv.sendto(b"pong", peer)
            assert u.recvfrom(64) == (b"pong", ("::1", uport, 0, 0))
            u.connect(("::1", uport))
            assert u.getpeername() == ("::1", uport, 0, 0)
    assert delta(before, xdp.counters()) == {}


def test_pinned_hooks_are_detached_without_loading_anything(loaded_dataplane):
    """What `svcctl agent --uninstall --socket-lb-cgroup PATH` does."""
    import os
    import shutil
    from pathlib import Path

    from controlplane import cgroups
    from controlplane.dataplane.sockhooks import SockHooks, detach_pinned
    pin_dir = Path(f"/sys/fs/bpf/svcxdp-socktest-{os.getpid()}")
    name = f"svcxdp-socktest-pins-{os.getpid()}"
    pin_dir.mkdir(parents=True, exist_ok=True)
    cg = cgroups.create(name)
    try:
        SockHooks(loaded_dataplane.bpf, pin_dir).attach(cg)
        assert all(len(v) == 1 for v in attached_ids(cg).values())
        assert sorted(detach_pinned(pin_dir, cg)) == sorted(h.name for h in HOOKS)
        assert all(not v for v in attached_ids(cg).values())
    finally:
        cgroups.remove(name)
        shutil.rmtree(pin_dir, ignore_errors=True)


@pytest.mark.parametrize("pins", ["kept", "removed"])
def test_a_restart_replaces_its_programs_in_place_on_every_cgroup(loaded_dataplane, pins):
    """A restarted agent with two cgroups (the lab's node and pods with
    SVCXDP_SOCKET_LB_PODS=1) swaps its new programs in for the pinned ones on both:
    one program per hook on each, the new one, not the old one beside it. Also when the
    pins are gone (`svcctl dataplane reset` while the hooks stayed attached): the old
    programs are found by their names, or they would go on translating first, over maps
    nothing updates any more."""
    import os
    import shutil
    from pathlib import Path

    from controlplane import cgroups
    from controlplane.dataplane.libbpf import prog_id
    from controlplane.dataplane.sockhooks import SockHooks
    bpf = loaded_dataplane.bpf
    pin_dir = Path(f"/sys/fs/bpf/svcxdp-socktest-restart-{os.getpid()}")
    names = [f"svcxdp-socktest-restart-{os.getpid()}-{i}" for i in (1, 2)]
    pin_dir.mkdir(parents=True, exist_ok=True)
    cached = {h.function.encode(): bpf.funcs.pop(h.function.encode(), None) for h in HOOKS}
    loaded: list[SockHooks] = []
    cgs = []

    def fresh() -> SockHooks:
        """New programs (new ids) from the same object, as a restarted agent loads."""
        for h in HOOKS:
            bpf.funcs.pop(h.function.encode(), None)
        loaded.append(SockHooks(bpf, pin_dir))
        return loaded[-1]
    try:
        first, restarted = fresh(), fresh()
        cgs = [cgroups.create(n) for n in names]
        first.attach(*cgs)
        old_ids = {h.name: [prog_id(first.fds[h.name])] for h in HOOKS}
        assert all(attached_ids(cg) == old_ids for cg in cgs)
        if pins == "removed":
            for pin in pin_dir.iterdir():
                pin.unlink()
        restarted.attach(*cgs)
        new_ids = {h.name: [prog_id(restarted.fds[h.name])] for h in HOOKS}
        assert new_ids != old_ids
        for cg in cgs:
            assert attached_ids(cg) == new_ids, cg
    finally:
        for n in names[:len(cgs)]:
            cgroups.remove(n)
        shutil.rmtree(pin_dir, ignore_errors=True)
        for hooks in loaded:
            for fd in hooks.fds.values():
                os.close(fd)
        for h in HOOKS:
            bpf.funcs.pop(h.function.encode(), None)
        bpf.funcs.update({k: v for k, v in cached.items() if v is not None})
