"""The lab runtime with real clients: nodes, outside, pods and their servers, exec, down."""
from __future__ import annotations

import socket
import sys

import pytest
from pyroute2 import IPRoute

from controlplane.lab import netns
from controlplane.lab.client import run_temporary_pod
from controlplane.lab.hooks import ProcessSpec
from controlplane.lab.state import PortSpec
from controlplane.lab.topology import ETC_NETNS

pytestmark = pytest.mark.root


def sh(lab, host: str, *argv: str, timeout: float = 10) -> str:
    proc = lab.exec(host, list(argv), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} in {host}: rc={proc.returncode} {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def pods(lab):
    """Servers on node2, a busybox client on node1."""
    return {
        "myapp": lab.add_pod("myapp-1", "node2", "ikubernetes/myapp:v2", [80]),
        "nginx": lab.add_pod("nginx-1", "node2", "nginx:1.25", [PortSpec(80)]),
        "httpd": lab.add_pod("httpd-1", "node1", "httpd:2.4", [80]),
        "redis": lab.add_pod("redis-1", "node2", "redis:7", [6379]),
        "echo": lab.add_pod("echo-1", "node2", "example/echo:1", [(5353, "UDP"), (8080, "TCP")]),
        "client": lab.add_pod("client", "node1", "busybox"),
    }


def test_nodes_and_outside(lab):
    status = lab.status()
    assert status.up and not status.missing
    assert [(n.name, n.ip, n.pod_cidr) for n in status.nodes] == [
        ("node1", "192.168.1.31", "10.244.1.0/24"),
        ("node2", "192.168.1.32", "10.244.2.0/24"),
    ]
    assert sh(lab, "node1", "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert sh(lab, "outside", "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
    for n in status.nodes:
        assert netns.exists(n.netns) and n.netns.startswith(lab.prefix + "-node")


def test_outside_reaches_node1(lab):
    out = sh(lab, "outside", "busybox", "ping", "-c", "1", "-W", "2", "192.168.1.31")
    assert "1 packets received" in out


def test_outside_routes_the_load_balancer_pool_to_every_node(lab):
    """One ECMP route: the kernel picks a node per flow (L4 hash), so over many client ports
    both nodes are chosen; and the lab's store holds the pool for LB-IPAM."""
    from controlplane.controllers.lb_pool import load_pool
    from controlplane.store.paths import open_store
    assert "nexthop via 192.168.1.31" in sh(lab, "outside", "ip", "route", "show", "192.168.1.240/28")
    chosen = set()
    for sport in range(40000, 40040):
        out = sh(lab, "outside", "ip", "route", "get", "192.168.1.241", "ipproto", "tcp",
                 "sport", str(sport), "dport", "80")
        chosen.add(out.split(" via ", 1)[1].split()[0])
    assert chosen == {"192.168.1.31", "192.168.1.32"}
    store = open_store(lab.store.state_dir)
    try:
        assert load_pool(store).entries == ["192.168.1.240/28"]
    finally:
        store.close()


def test_pod_to_pod_http_across_nodes(lab, pods):
    ip = pods["myapp"].ip
    assert ip.startswith("10.244.2.")
    assert sh(lab, "client", "busybox", "wget", "-qO-", f"http://{ip}/hostname.html").strip() == "myapp-1"
    assert sh(lab, "client", "busybox", "wget", "-qO-", f"http://{ip}/") == (
        'Hello MyApp | Version: v2 | <a href="hostname.html">Pod Name</a>\n'
    )


def test_image_pages(lab, pods):
    assert "<h1>Welcome to nginx!</h1>" in sh(lab, "client", "curl", "-s", f"http://{pods['nginx'].ip}/")
    assert sh(lab, "client", "curl", "-s", f"http://{pods['httpd'].ip}/").strip() == (
        "<html><body><h1>It works!</h1></body></html>"
    )
    for name in ("nginx", "httpd", "echo"):
        port = 8080 if name == "echo" else 80
        got = sh(lab, "client", "curl", "-s", f"http://{pods[name].ip}:{port}/hostname.html")
        assert got.strip() == pods[name].name
    code = sh(lab, "client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{pods['nginx'].ip}/nope")
    assert code == "404"


def test_redis_ping(lab, pods):
    assert pods["redis"].server == "redis"
    assert sh(lab, "client", "redis-cli", "-h", pods["redis"].ip, "ping").strip() == "PONG"


def test_udp_echo(lab, pods):
    def roundtrip() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(b"hello udp", (pods["echo"].ip, 5353))
            return s.recv(100)

    assert netns.call_in(pods["client"].netns, roundtrip) == b"hello udp"


def test_client_pods_run_nothing(lab, pods):
    assert pods["client"].pid is None and pods["client"].server == "none"
    assert netns.pids(pods["client"].netns) == []


def test_svcctl_exec_passes_output_and_exit_code(lab, pods, svcctl):
    proc = svcctl(lab, "exec", "node1", "--", "sh", "-c", "echo out; echo err >&2; exit 7", capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "out\n", "err\n")
    proc = svcctl(lab, "exec", "client", "--", "busybox", "wget", "-qO-", f"http://{pods['myapp'].ip}/hostname.html",
                  capture_output=True, text=True)
    assert (proc.returncode, proc.stdout.strip()) == (0, "myapp-1")
    proc = svcctl(lab, "exec", "-i", "outside", "--", "cat", input="piped\n", capture_output=True, text=True)
    assert proc.stdout == "piped\n"
    proc = svcctl(lab, "exec", "no-such-pod", "--", "true", capture_output=True, text=True)
    assert proc.returncode == 1 and "no pod, node or host" in proc.stderr


def test_pod_wiring(lab, pods):
    client = pods["client"]
    assert sh(lab, "client", "cat", "/etc/resolv.conf").splitlines()[1] == "nameserver 10.96.0.10"
    route = sh(lab, "client", "ip", "route", "show", "default")
    assert route.startswith("default via 10.244.1.1 dev eth0")
    with IPRoute(netns=lab.netns_for("node1"), flags=0) as ipr:
        link = ipr.get_links(client.host_ifindex)[0]
        assert link.get("ifname") == client.host_ifname
        neigh = ipr.get_neighbours(ifindex=client.host_ifindex, dst=client.ip)
        assert neigh and neigh[0]["state"] == 128  # NUD_PERMANENT


def test_attach_points(lab, pods):
    points = lab.attach_points("node2")
    ext = [p for p in points if p.role == "external"]
    assert [(p.ifname, p.peer_netns) for p in ext] == [("eth0", lab.netns_for("outside"))]
    by_pod = {p.pod: p for p in points if p.role == "pod"}
    assert set(by_pod) == {"myapp-1", "nginx-1", "redis-1", "echo-1"}
    with IPRoute(netns=lab.netns_for("myapp-1"), flags=0) as ipr:
        assert ipr.link_lookup(ifname="eth0") == [by_pod["myapp-1"].peer_ifindex]
    with IPRoute(netns=lab.netns_for("node2"), flags=0) as ipr:
        for p in points:
            assert ipr.link_lookup(ifname=p.ifname) == [p.ifindex]
    # what the node's agent reads (svcctl agent --attach-points): the same interfaces
    from controlplane.agent.attach_sources import FileAttachPoints, Target
    assert FileAttachPoints(lab.store.attach_file("node2"))() == [
        Target(p.netns, p.ifname, p.ifindex, p.peer_netns, p.peer_ifname, p.role) for p in points]


def test_remove_pod_and_ip_allocation(lab, pods):
    a = lab.add_pod("tmp-a", "node1", "nginx", [80])
    b = lab.add_pod("tmp-b", "node1", "nginx", [80])
    assert a.ip != b.ip and {a.ip, b.ip}.isdisjoint({p.ip for p in pods.values()})
    assert lab.add_pod("tmp-a", "node1", "nginx", [80]) == a  # idempotent
    assert lab.remove_pod("tmp-a") and not lab.remove_pod("tmp-a")
    assert not netns.exists(a.netns) and not (ETC_NETNS / a.netns).exists()
    with IPRoute(netns=lab.netns_for("node1"), flags=0) as ipr:
        assert ipr.link_lookup(ifname=a.host_ifname) == []
    c = lab.add_pod("tmp-c", "node1", "nginx", [80])
    assert c.ip != a.ip  # a freed address is not handed out again at once
    lab.remove_pod("tmp-b")
    lab.remove_pod("tmp-c")


def test_temporary_client_pod(lab, pods):
    rc = run_temporary_pod(lab, "tmp-client", ["sh", "-c", f"wget -qO- http://{pods['myapp'].ip}/ >/dev/null; exit 5"],
                           interactive=False)
    assert rc == 5
    assert lab.pod("tmp-client") is None


def test_up_again_keeps_everything_and_grows(lab, pods):
    before = {p.name: (p.ip, p.pid) for p in lab.pods()}
    status = lab.up(nodes=3)
    assert {p.name: (p.ip, p.pid) for p in status.pods} == before
    assert [n.name for n in status.nodes] == ["node1", "node2", "node3"]
    far = lab.add_pod("far-1", "node3", "nginx", [80])
    assert sh(lab, "client", "busybox", "wget", "-qO-", f"http://{far.ip}/hostname.html").strip() == "far-1"
    assert sh(lab, "client", "redis-cli", "-h", pods["redis"].ip, "ping").strip() == "PONG"


def test_node_processes_and_down_leave_nothing(make_lab):
    lab = make_lab(nodes=2, name="down")
    sleeper = lambda node, _lab: [ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])]
    lab.up(nodes=2, node_processes=sleeper)
    first = {p.node: p.pid for p in lab.status().processes}
    assert set(first) == {"node1", "node2"}
    lab.up(nodes=2, node_processes=sleeper)  # a live process is not started twice
    assert {p.node: p.pid for p in lab.status().processes} == first
    lab.add_pod("web", None, "nginx", [80])
    lab.add_pod("db", None, "redis", [6379])
    status = lab.status()
    assert {p.node for p in status.pods} == {"node1", "node2"}  # fewest-pods scheduling
    pids = [p.pid for p in status.pods] + list(first.values())
    names = status.nodes[0].netns, lab.netns_for("web"), lab.netns_for("outside")

    removed = lab.down()
    assert set(names) <= set(removed)
    assert netns.list_names(lab.prefix + "-") == []
    assert not lab.store.root.exists()
    for pid in pids:
        assert netns.pid_netns_inode(pid) is None, f"pid {pid} still running"
    assert not lab.status().up
    lab.down()  # idempotent


# -- a lab is owned by its state dir ------------------------------------------------------

def _sleeper(node, _lab):
    return [ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])]


def _cli(monkeypatch, prefix: str, command, capsys, **flags):
    """`svcctl lab down|up` in-process, its labs made with `prefix` (the CLI's is `svcxdp`,
    which a user's lab may use): (exit code, stdout, stderr)."""
    import argparse

    from controlplane.lab import commands
    from controlplane.lab.topology import Lab
    monkeypatch.setattr(commands, "Lab", lambda state_dir: Lab(state_dir, prefix=prefix))
    args = argparse.Namespace(subcommand="lab", **flags)
    code = command(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_down_and_up_of_another_state_dir_leave_the_lab_alone(make_lab, tmp_path, monkeypatch, capsys):
    """QA: `lab down --state-dir <no lab>` removed the lab of another state dir (its processes,
    namespaces, cgroups); `lab up --state-dir B` adopted A's namespaces and started a second
    agent beside A's."""
    from controlplane import cgroups
    from controlplane.lab import commands
    from controlplane.lab.topology import Lab, LabError
    a = make_lab(nodes=1, name="own")
    a.up(nodes=1, node_processes=_sleeper)
    a.add_pod("web", "node1", "nginx", [80])
    before = a.status()
    names = sorted(a.status().missing + [n.netns for n in before.nodes] + [before.outside.netns, a.netns_for("web")])
    pids = [p.pid for p in before.processes] + [p.pid for p in before.pods if p.pid]

    b = Lab(tmp_path / "b", prefix=a.prefix)
    assert b.down() == []
    assert all(netns.exists(n) for n in names) and a.status().processes == before.processes
    code, out, err = _cli(monkeypatch, a.prefix, commands.cmd_down, capsys, state_dir=str(tmp_path / "b"),
                          force=False, lab_command="down")
    assert code == 1
    assert out.strip() == f"lab down: no lab in state dir {tmp_path / 'b'} (no {tmp_path / 'b' / 'lab' / 'state.json'})"
    assert f"belong to the lab of state dir {a.owner}" in err and f"svcctl lab down --state-dir {a.owner}" in err
    assert all(n in err for n in names)
    with pytest.raises(LabError, match=f"belong to the lab of state dir {a.owner}"):
        b.up(nodes=1, node_processes=_sleeper)
    assert not b.store.exists() or b.status().processes == []

    after = a.status()   # A is whole: nothing stopped, removed or adopted
    assert after.up and not after.degraded and after.processes == before.processes
    assert all(netns.exists(n) for n in names)
    assert all(netns.pid_netns_inode(p) is not None for p in pids)
    assert f"{a.prefix}-node1" in cgroups.list_names(a.prefix)
    assert sh(a, "outside", "busybox", "ping", "-c", "1", "-W", "2", "192.168.1.31")
    assert set(b.others()) == set(names) and set(b.others().values()) == {a.owner}


def test_a_lab_whose_state_dir_is_lost_goes_only_when_forced(make_lab, tmp_path, monkeypatch, capsys):
    """Namespaces no state records (their state dir removed) are named with `--force` as the
    way to remove them; forced, everything with the lab's names goes."""
    import shutil

    from controlplane.lab import commands
    from controlplane.lab.topology import Lab, LabError
    lost = make_lab(nodes=1, name="lost")
    lost.up(nodes=1, node_processes=_sleeper)
    pids = [p.pid for p in lost.status().processes]
    shutil.rmtree(lost.store.root)   # the state is gone, its namespaces stay

    other = Lab(tmp_path / "other", prefix=lost.prefix)
    with pytest.raises(LabError, match="belong to no lab's state .*`svcctl lab down --force`"):
        other.up(nodes=1)
    code, out, err = _cli(monkeypatch, lost.prefix, commands.cmd_down, capsys, state_dir=str(tmp_path / "other"),
                          force=False, lab_command="down")
    assert code == 1 and "no lab in state dir" in out
    assert "belong to no lab's state" in err and "svcctl lab down --force" in err
    assert netns.exists(f"{lost.prefix}-node1") and all(netns.pid_netns_inode(p) for p in pids)

    code, out, err = _cli(monkeypatch, lost.prefix, commands.cmd_down, capsys, state_dir=str(tmp_path / "other"),
                          force=True, lab_command="down")
    assert code == 0 and err == ""
    assert out.startswith("lab down: removed 2 namespaces") and f"{lost.prefix}-node1" in out
    assert netns.list_names(lost.prefix + "-") == []
    assert all(netns.pid_netns_inode(p) is None for p in pids)


def test_a_state_dir_whose_record_is_lost_still_owns_its_namespaces(make_lab):
    """A state dir whose record is lost (state.json removed) still owns what it made: `up`
    there refuses to start over beside it, a plain `down` there removes it (as before labs
    had owners)."""
    from controlplane.lab.topology import LabError
    lab = make_lab(nodes=1, name="norec")
    lab.up(nodes=1, node_processes=_sleeper)
    pids = [p.pid for p in lab.status().processes]
    lab.store.file.unlink()
    with pytest.raises(LabError, match=r"made by the lab of this state dir .* whose record of them .* is lost"):
        lab.up(nodes=1, node_processes=_sleeper)   # not a second set of processes beside the first
    assert all(netns.pid_netns_inode(p) is not None for p in pids)
    assert lab.others() == {}
    assert set(lab.down()) == {f"{lab.prefix}-node1", f"{lab.prefix}-outside"}
    assert all(netns.pid_netns_inode(p) is None for p in pids)


def test_up_that_ends_degraded_exits_non_zero(make_lab, monkeypatch, capsys):
    """QA: an agent that died at once (EADDRINUSE) left `lab up` waiting 3 minutes, then
    printing `lab: degraded ... not running: node1/agent` with exit code 0."""
    from controlplane.lab import commands
    lab = make_lab(nodes=1, name="degr")
    monkeypatch.setattr(commands.hooks, "node_processes",
                        lambda node, _lab: [ProcessSpec("agent", [sys.executable, "-c", "raise SystemExit(1)"])])
    monkeypatch.setattr(commands._wait_ready, "__defaults__", (20.0,))
    code, out, err = _cli(monkeypatch, lab.prefix, commands.cmd_up, capsys, state_dir=str(lab.store.state_dir),
                          lab_command="up", socket_lb_pods=False, no_node_processes=False, no_dns=True,
                          nodes=1, store=None, etcd_members=3, no_wait=False, agent_arg=[])
    assert code == 1, (out, err)
    assert "lab: degraded" in out and "not running: node1/agent" in out
    assert "error: the lab came up degraded (node1/agent)" in err


def test_down_names_only_the_pod_namespaces_it_removed(make_lab):
    """QA nit: `lab down` listed a pod's namespace as removed when it was already gone."""
    lab = make_lab(nodes=1, name="gone")
    pod = lab.add_pod("web", "node1", "busybox")
    netns.delete(pod.netns)
    assert pod.netns not in lab.down()
