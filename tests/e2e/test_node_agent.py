"""`svcctl agent` as a real node's agent, in a namespace of our own standing in for a node
(never this machine's interfaces): --discover attaches to the default route's device and the
pod interfaces named with a prefix, follows a new one through netlink, pins the program, and
--uninstall detaches it everywhere and removes the pins."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def xdp_prog(netns: str, ifname: str) -> int | None:
    link = json.loads(ip("-n", netns, "-j", "-d", "link", "show", ifname))[0]
    xdp = link.get("xdp") or {}
    prog = xdp.get("prog") or {}
    return prog.get("id")


def tc_filters(netns: str, ifname: str, hook: str) -> str:
    return subprocess.run(["tc", "-n", netns, "filter", "show", "dev", ifname, hook], capture_output=True,
                          text=True).stdout


def tc_egress(netns: str, ifname: str) -> str:
    return tc_filters(netns, ifname, "egress")


def tc_ingress(netns: str, ifname: str) -> str:
    return tc_filters(netns, ifname, "ingress")


def bpftool_xlated(prog_id: int) -> str:
    return subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_id)], check=True,
                          capture_output=True, text=True).stdout


def svcctl_in(netns: str, *args: str, log: Path) -> subprocess.Popen:
    # nsenter keeps the host's mounts (/sys/fs/bpf), which `ip netns exec` would hide
    with open(log, "ab") as out:
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-m", "controlplane.cli",
                                 *args], cwd=ROOT, stdout=out, stderr=out, start_new_session=True)


def wait_for(predicate, timeout: float = 180.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached")


@pytest.fixture
def node_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    name = f"svcxdp-nodeagent-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "uplink")
        ip("-n", name, "link", "add", "veth-a", "type", "veth", "peer", "name", "pod-a")
        for dev in ("lo", "eth0", "uplink", "veth-a", "pod-a"):
            ip("-n", name, "link", "set", dev, "up")
        ip("-n", name, "addr", "add", "10.250.0.1/24", "dev", "eth0")
        ip("-n", name, "route", "add", "default", "via", "10.250.0.2", "dev", "eth0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        # the agent pins under its instance (= this name); a test that fails before
        # --uninstall would leave the pins behind
        shutil.rmtree(Path("/sys/fs/bpf/svcxdp") / name, ignore_errors=True)


def test_discovery_attach_follow_and_uninstall(node_ns: str, tmp_path: Path) -> None:
    instance = node_ns
    common = ["--node", "n1", "--instance", instance, "--discover", "--pod-interface-prefix", "veth"]
    agent = svcctl_in(node_ns, "agent", *common, "--state-dir", str(tmp_path), "--healthz-port", "0",
                      "--xdp-mode", "generic", log=tmp_path / "agent.log")
    try:
        wait_for(lambda: xdp_prog(node_ns, "eth0") and xdp_prog(node_ns, "veth-a"), what="attach")
        # the default route's device runs the external entry point, pod interfaces the main one
        external, ours = xdp_prog(node_ns, "eth0"), xdp_prog(node_ns, "veth-a")
        assert external != ours
        assert xdp_prog(node_ns, "uplink") is None and xdp_prog(node_ns, "pod-a") is None  # not ours to take
        # no device here can be a redirect target (the pods' peers are not ours): the
        # program is built without the FIB lookup it would pay per packet for nothing
        assert "fib_lookup" not in bpftool_xlated(ours)
        # beside each, the tc egress program for the node's own answers (bpf/local_reply.h)
        assert all("svcxdp_local_reply" in tc_egress(node_ns, d) for d in ("eth0", "veth-a"))
        # and on the external one's ingress, the handoff of frames awaiting a neighbour (bpf/handoff.h)
        assert "svcxdp_handoff" in tc_ingress(node_ns, "eth0")
        assert "svcxdp_handoff" not in tc_ingress(node_ns, "veth-a")
        assert (Path("/sys/fs/bpf/svcxdp") / instance / "prog").exists()
        assert (Path("/sys/fs/bpf/svcxdp") / instance / "prog_external").exists()
        ip("-n", node_ns, "link", "add", "veth-b", "type", "veth", "peer", "name", "pod-b")   # a new pod
        ip("-n", node_ns, "link", "set", "veth-b", "up")
        wait_for(lambda: xdp_prog(node_ns, "veth-b") == ours, what="attach to the new pod interface")
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGTERM)
            agent.wait(30)
    assert xdp_prog(node_ns, "eth0") == external          # the agent's exit leaves traffic flowing
    done = svcctl_in(node_ns, "agent", *common, "--uninstall", "--xdp-mode", "generic", log=tmp_path / "uninstall.log")
    assert done.wait(60) == 0, (tmp_path / "uninstall.log").read_text()
    assert [xdp_prog(node_ns, d) for d in ("eth0", "veth-a", "veth-b")] == [None, None, None]
    assert not any("svcxdp_local_reply" in tc_egress(node_ns, d) for d in ("eth0", "veth-a", "veth-b"))
    assert "svcxdp_handoff" not in tc_ingress(node_ns, "eth0")
    assert not (Path("/sys/fs/bpf/svcxdp") / instance).exists()


def xdp_mode(netns: str, ifname: str) -> int | None:
    """IFLA_XDP_ATTACHED of the link: 1 native, 2 generic."""
    link = json.loads(ip("-n", netns, "-j", "-d", "link", "show", ifname))[0]
    return (link.get("xdp") or {}).get("mode")


def test_a_pod_whose_end_is_not_ours_gets_the_reject_of_a_service_without_endpoints(
        node_ns: str, tmp_path: Path) -> None:
    """On a real node the pod's end of its veth belongs to the CNI: no XDP program there,
    GRO off. Native XDP on the node's end then drops what the program sends back to the
    pod with XDP_TX — a service without endpoints' RST — and the client waits for its
    timeout instead of "connection refused". The agent attaches such interfaces in
    generic mode (--pod-xdp-mode auto); the external one stays native."""
    pod_ns = f"svcxdp-nodeagent-pod-{os.getpid()}"
    ip("netns", "add", pod_ns)
    agent = None
    try:
        ip("-n", node_ns, "link", "set", "pod-a", "netns", pod_ns)
        ip("-n", node_ns, "addr", "add", "10.244.0.1/24", "dev", "veth-a")
        for cmd in (("link", "set", "lo", "up"), ("link", "set", "pod-a", "up"),
                    ("addr", "add", "10.244.0.2/24", "dev", "pod-a"),
                    ("route", "add", "default", "via", "10.244.0.1", "dev", "pod-a")):
            ip("-n", pod_ns, *cmd)
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty", "namespace": "default"},
               "spec": {"clusterIP": "10.96.77.7", "ports": [{"port": 80, "protocol": "TCP"}]}}
        subprocess.run([sys.executable, "-m", "controlplane.cli", "apply", "--state-dir", str(tmp_path), "-f", "-"],
                       input=json.dumps(svc), text=True, cwd=ROOT, check=True, capture_output=True)
        agent = svcctl_in(node_ns, "agent", "--node", "n1", "--instance", node_ns, "--discover",
                          "--pod-interface-prefix", "veth", "--state-dir", str(tmp_path), "--healthz-port", "0",
                          log=tmp_path / "agent.log")
        wait_for(lambda: xdp_prog(node_ns, "eth0") and xdp_prog(node_ns, "veth-a"), what="attach")
        assert (xdp_mode(node_ns, "eth0"), xdp_mode(node_ns, "veth-a")) == (1, 2)

        def refused() -> bool:
            p = subprocess.run(["ip", "netns", "exec", pod_ns, sys.executable, "-c",
                                "import socket; s = socket.socket(); s.settimeout(2); "
                                "s.connect(('10.96.77.7', 80))"], capture_output=True, text=True)
            return "ConnectionRefusedError" in p.stderr
        wait_for(refused, timeout=30, what="connection refused by the service without endpoints")
    finally:
        if agent is not None and agent.poll() is None:
            os.kill(agent.pid, signal.SIGTERM)
            agent.wait(30)
        subprocess.run(["ip", "netns", "del", pod_ns], check=False)
        done = svcctl_in(node_ns, "agent", "--node", "n1", "--instance", node_ns, "--discover",
                         "--pod-interface-prefix", "veth", "--uninstall", log=tmp_path / "uninstall.log")
        done.wait(60)


def test_a_nodeport_whose_backend_is_on_the_node_answers_outside(tmp_path: Path) -> None:
    """A real node forwards through its stack: XDP reverse-NATs the pod's answer to the
    NodePort (the node's own address as source) and passes it up from the pod's veth,
    where the stack dropped it as a martian (accept_local is off on real nodes; the lab
    sets it, so its tests never saw this). The agent turns accept_local on for the pod
    interfaces it serves."""
    pid = os.getpid()
    node, outside, pod = f"svcxdp-nodeagent-n{pid}", f"svcxdp-nodeagent-o{pid}", f"svcxdp-nodeagent-p{pid}"
    for ns in (node, outside, pod):
        ip("netns", "add", ns)
    agent = server = None
    try:
        ip("-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", outside)
        ip("-n", node, "link", "add", "veth-a", "type", "veth", "peer", "name", "eth0", "netns", pod)
        for ns, dev, addr in ((node, "eth0", "10.250.0.1/24"), (outside, "up0", "10.250.0.2/24"),
                              (node, "veth-a", "10.244.0.1/24"), (pod, "eth0", "10.244.0.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        for ns in (node, outside, pod):
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", node, "route", "add", "default", "via", "10.250.0.2", "dev", "eth0")
        ip("-n", pod, "route", "add", "default", "via", "10.244.0.1", "dev", "eth0")
        subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-m", "http.server", "8080",
                                   "--bind", "10.244.0.2"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        docs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                 "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30300}]}},
                {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "web-1", "namespace": "default",
                              "labels": {"kubernetes.io/service-name": "web"}},
                 "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
                 "endpoints": [{"addresses": ["10.244.0.2"], "conditions": {"ready": True}, "nodeName": "n1"}]}]
        subprocess.run([sys.executable, "-m", "controlplane.cli", "apply", "--state-dir", str(tmp_path), "-f", "-"],
                       input="\n---\n".join(json.dumps(d) for d in docs), text=True, cwd=ROOT, check=True,
                       capture_output=True)
        agent = svcctl_in(node, "agent", "--node", "n1", "--instance", node, "--discover",
                          "--pod-interface-prefix", "veth", "--state-dir", str(tmp_path), "--healthz-port", "0",
                          log=tmp_path / "agent.log")
        wait_for(lambda: xdp_prog(node, "eth0") and xdp_prog(node, "veth-a"), what="attach")

        def answered() -> bool:
            return subprocess.run(["ip", "netns", "exec", outside, "curl", "-s", "-m", "2", "-o", "/dev/null",
                                   "-w", "%{http_code}", "http://10.250.0.1:30300/"],
                                  capture_output=True, text=True).stdout == "200"
        wait_for(answered, timeout=30, what="the NodePort answered from outside")
    finally:
        for p in (agent, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
        if agent is not None:
            svcctl_in(node, "agent", "--node", "n1", "--instance", node, "--discover", "--pod-interface-prefix",
                      "veth", "--uninstall", log=tmp_path / "uninstall.log").wait(60)
        for ns in (node, outside, pod):
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(Path("/sys/fs/bpf/svcxdp") / node, ignore_errors=True)


def test_uninstall_by_an_attach_file_detaches_what_it_names(node_ns: str, tmp_path: Path) -> None:
    """An agent given its interfaces by an attach file (--attach-points, as the lab's) is
    uninstalled by the same file: every interface it names loses our XDP program and tc
    filter (the QA pass found them left attached, pins removed, with --attach-points), and
    an interface the file names that is gone meanwhile is passed over."""
    instance = node_ns
    points = tmp_path / "attach.json"

    def target(ifname: str, role: str) -> dict:
        index = json.loads(ip("-n", node_ns, "-j", "link", "show", ifname))[0]["ifindex"]
        return {"netns": node_ns, "ifname": ifname, "ifindex": index, "role": role}
    points.write_text(json.dumps([target("eth0", "external"), target("veth-a", "pod")]))
    common = ["--node", "n1", "--instance", instance, "--attach-points", str(points)]
    agent = svcctl_in(node_ns, "agent", *common, "--state-dir", str(tmp_path), "--healthz-port", "0",
                      "--xdp-mode", "generic", log=tmp_path / "agent.log")
    try:
        wait_for(lambda: xdp_prog(node_ns, "eth0") and xdp_prog(node_ns, "veth-a"), what="attach")
        wait_for(lambda: "svcxdp_handoff" in tc_ingress(node_ns, "eth0"), what="tc ingress")
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGTERM)
            agent.wait(30)
    entries = json.loads(points.read_text())
    points.write_text(json.dumps(entries + [dict(entries[1], ifname="veth-gone", ifindex=99)]))
    done = svcctl_in(node_ns, "agent", *common, "--uninstall", "--xdp-mode", "generic", log=tmp_path / "uninstall.log")
    assert done.wait(60) == 0, (tmp_path / "uninstall.log").read_text()
    assert [xdp_prog(node_ns, d) for d in ("eth0", "veth-a")] == [None, None]
    assert not any("svcxdp_local_reply" in tc_egress(node_ns, d) for d in ("eth0", "veth-a"))
    assert "svcxdp_handoff" not in tc_ingress(node_ns, "eth0")
    assert not (Path("/sys/fs/bpf/svcxdp") / instance).exists()
