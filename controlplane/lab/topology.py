"""The lab: an `outside` host, nodes and pods as network namespaces, recorded in state.

    lab = Lab(state_dir)                 # state under <state_dir>/lab/
    lab.up(nodes=2)                      # idempotent; never removes nodes
    pod = lab.add_pod("web-1", "node1", "nginx:1.25", [PortSpec(80)])
    lab.exec("web-1", ["busybox", "wget", "-qO-", "http://10.244.2.2/"])
    lab.down()                           # removes exactly what the state records

A lab is owned by its state dir: each namespace it makes carries the state dir's path
(netns.set_owner, lo's alias). `up` refuses namespaces of its names another state dir made
(or that no state records); `down` removes its own and leaves the others, naming their
owner, unless forced (`down(force=True)`, `svcctl lab down --force`: a lost state dir).

Topology (node N, N >= 1):
    svcxdp-outside   bridge svcxdp-br0 192.168.1.100/24, port svcxdp-nN per node;
                     192.168.1.240/28 (the LoadBalancer pool) via every node, ECMP
    svcxdp-nodeN     eth0 192.168.1.(30+N)/24, forwarding on, 10.244.M.0/24 via node M,
                     default via outside; per pod a veth vp<hash> holding 10.244.N.1/32
                     and a /32 route to the pod
    svcxdp-pod-NAME  eth0 10.244.N.x/32, default via 10.244.N.1
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from controlplane import cgroups
from controlplane.controllers.lb_pool import Pool, pool_is_set, save_pool
from controlplane.lab import etcd_cluster, netns, plan, procs, servers, wiring
from controlplane.lab.hooks import NodeProcessProvider
from controlplane.lab.images import server_for
from controlplane.lab.state import (
    AttachPoint,
    attach_points,
    EtcdMemberRecord,
    LabState,
    NodeRecord,
    OutsideRecord,
    PodRecord,
    PortSpec,
    ProcessRecord,
    StateStore,
)
from controlplane.store.paths import STORE_URL_FILE, open_store

ETC_NETNS = Path("/etc/netns")
# SIGTERM to SIGKILL for a pod's server: room for a DNS pod's lameduck (svcctl dns keeps
# answering 3 s while its endpoint leaves every node's maps); other servers exit at once.
POD_STOP_TIMEOUT = 5.0


class LabError(RuntimeError):
    pass


def owner_tag(state_dir: str | os.PathLike) -> str:
    """What a lab's namespaces record as their owner: the state dir's real path (a hash of
    it when too long for an interface alias)."""
    path = os.path.realpath(state_dir)
    return path if len(path) <= 200 else "sha1:" + hashlib.sha1(path.encode()).hexdigest()


def owner_records(owner: str, ns: str) -> bool:
    """Whether the state dir `owner` (an owner_tag) still records namespace `ns`."""
    if owner.startswith("sha1:"):
        return False
    state = StateStore(owner).load()
    return state is not None and ns in state.netns_names()


@dataclass(frozen=True)
class NodeInfo:
    name: str
    index: int
    netns: str
    ip: str
    pod_cidr: str
    gateway: str
    ext_ifname: str
    ext_ifindex: int


@dataclass(frozen=True)
class PodHandle:
    name: str
    netns: str
    node: str
    ip: str
    image: str
    host_ifname: str  # node side of the veth, in the node's namespace
    host_ifindex: int
    pod_ifname: str  # "eth0", in the pod's namespace
    pod_ifindex: int
    pid: int | None  # the pod's server process, None for client-only images
    server: str
    ports: tuple[PortSpec, ...] = ()
    phase: str = "Running"  # add_pod returns once the server answers: Running and Ready
    host_network: bool = False


@dataclass
class LabStatus:
    up: bool
    state_dir: str
    prefix: str
    outside: OutsideRecord | None
    nodes: list[NodeInfo] = field(default_factory=list)
    pods: list[PodHandle] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # recorded namespaces that are gone
    dead: list[str] = field(default_factory=list)  # recorded processes that are gone
    # The lab exists but is not whole: a namespace or a process it recorded is gone (a dead
    # kubelet or agent leaves every namespace in place, yet pods or services stop following).
    degraded: bool = False
    store: str = "sqlite"  # sqlite | etcd
    etcd: list[EtcdMemberRecord] = field(default_factory=list)
    store_url: str | None = None  # etcd: what node processes are given (the members' LAN addresses)


def _ports(ports: Iterable[PortSpec | int | tuple | dict]) -> list[PortSpec]:
    out = []
    for p in ports:
        if isinstance(p, PortSpec):
            out.append(p)
        elif isinstance(p, int):
            out.append(PortSpec(p))
        elif isinstance(p, dict):
            out.append(PortSpec(int(p.get("containerPort") or p["port"]), str(p.get("protocol", "TCP")).upper(), p.get("name")))
        else:
            out.append(PortSpec(int(p[0]), str(p[1]).upper() if len(p) > 1 else "TCP"))
    return out


def _node_info(n: NodeRecord) -> NodeInfo:
    return NodeInfo(n.name, n.index, n.netns, n.ip, n.pod_cidr, n.gateway, n.ext_ifname, n.ext_ifindex)


def _pod_handle(p: PodRecord) -> PodHandle:
    return PodHandle(
        p.name, p.netns, p.node, p.ip, p.image, p.host_ifname, p.host_ifindex,
        p.pod_ifname, p.pod_ifindex, p.pid, p.server, tuple(p.ports), p.phase, p.host_network,
    )


class Lab:
    def __init__(self, state_dir: str | Path | None = None, prefix: str = plan.PREFIX) -> None:
        self.store = StateStore(state_dir)
        self.prefix = plan.check_prefix(prefix)
        self._removing: list[str] | None = None   # while down() runs: the namespaces it removes

    # -- state ----------------------------------------------------------------------------
    def _load(self) -> LabState:
        state = self.store.load()
        if state is None:
            return LabState(prefix=self.prefix)
        self.prefix = state.prefix  # a lab keeps the names it was made with
        return state

    def _require_up(self) -> LabState:
        state = self.store.load()
        if state is None or state.outside is None or not state.nodes:
            raise LabError(f"the lab is not up (state dir {self.store.state_dir}); run `svcctl lab up`")
        self.prefix = state.prefix
        return state

    # -- nodes ----------------------------------------------------------------------------
    def up(self, nodes: int = 1, node_processes: NodeProcessProvider | None = None,
           store: str | None = None, etcd_members: int = 3,
           progress: Callable[[str], None] | None = None) -> LabStatus:
        """Create what is missing for `nodes` nodes; existing nodes, pods and processes stay.
        store="etcd": the store is an etcd cluster of `etcd_members` members in the lab
        (chosen when the lab is made; a stopped member is started again). `progress` is told
        each step as it starts."""
        if not 1 <= nodes <= plan.MAX_NODES:
            raise LabError(f"--nodes must be between 1 and {plan.MAX_NODES}")
        if store not in (None, "sqlite", "etcd"):
            raise LabError(f"--store must be sqlite or etcd, not {store!r}")
        say = progress or (lambda text: None)
        with self.store.locked():
            state = self._load()
            self._refuse_others(state)
            if store is not None and state.outside is not None and store != state.store:
                raise LabError(f"the lab is up with the {state.store} store; `svcctl lab down` before "
                               f"bringing it up with {store}")
            if store is not None:
                state.store = store
            say("lab up: outside host")
            self._up_outside(state)
            if state.store == "etcd":
                say(f"lab up: etcd ({etcd_members} members)")
                self._up_etcd(state, etcd_members)
            for index in range(1, nodes + 1):
                say(f"lab up: {plan.node_name(index)} ({index}/{nodes}): namespace, cgroups, uplink")
                self._up_node(state, index)
            say("lab up: routes between the nodes")
            self._mesh(state)
            self._seed_lb_pool()
            if node_processes is not None:
                say("lab up: starting the node processes (agents, kubelet)")
                self._start_node_processes(state, node_processes)
            self.store.save(state)
        return self.status()

    def _up_outside(self, state: LabState) -> None:
        if state.outside is None:
            state.outside = OutsideRecord(
                netns=plan.outside_netns(self.prefix), bridge=plan.BRIDGE_IFNAME,
                ip=plan.OUTSIDE_IP, bridge_mac=plan.BRIDGE_MAC,
            )
            self.store.save(state)  # recorded before it exists
        o = state.outside
        self._make_netns(o.netns, router=False)
        wiring.make_bridge(o.netns, o.bridge, o.bridge_mac, o.ip, plan.LAN_PREFIXLEN)

    def _up_etcd(self, state: LabState, members: int) -> None:
        """The etcd members: namespaces on the LAN, processes (started again if dead), then
        wait for a leader and record the members' unix sockets in <state dir>/store-url."""
        if not 1 <= members <= plan.MAX_ETCD_MEMBERS:
            raise LabError(f"--etcd-members must be between 1 and {plan.MAX_ETCD_MEMBERS}")
        if state.etcd and len(state.etcd) != members:
            raise LabError(f"the lab's etcd has {len(state.etcd)} members (its size is fixed when it is "
                           f"made); `svcctl lab down` first")
        assert state.outside is not None
        if not state.etcd:
            for index in range(1, members + 1):
                rec = etcd_cluster.member_record(self.prefix, index, self.store.root / "etcd")
                state.etcd[rec.name] = rec
            self.store.save(state)   # recorded before anything exists
        recs = sorted(state.etcd.values(), key=lambda m: m.index)
        for rec in recs:
            self._make_netns(rec.netns, router=False)
            wiring.make_uplink(state.outside.netns, state.outside.bridge, rec.ext_peer_ifname,
                               rec.netns, rec.ext_ifname, rec.ext_mac, rec.ip, plan.LAN_PREFIXLEN)
            current = next((p for p in state.processes if p.node == rec.name and p.name == "etcd"), None)
            if current is None or not procs.alive(current.pid, current.netns):
                # a killed member leaves its unix socket behind, and etcd will not bind over it
                (Path(rec.dir) / etcd_cluster.SOCKET_NAME).unlink(missing_ok=True)
            self._start_process(state, rec.name, rec.netns, "etcd",
                                etcd_cluster.member_argv(rec, recs, self.prefix), cwd=Path(rec.dir))
        url = etcd_cluster.local_url(recs)
        try:
            etcd_cluster.wait_ready(url)
        except etcd_cluster.EtcdClusterError as exc:
            raise LabError(f"{exc} (logs in {self.store.logs})") from None
        (self.store.state_dir / STORE_URL_FILE).write_text(url + "\n")

    def _start_process(self, state: LabState, host: str, ns: str, name: str, argv: list[str],
                       env: dict[str, str] | None = None, keep_mounts: bool = False,
                       cwd: Path | None = None) -> int:
        """Start a recorded process on `host` unless a live one runs; returns its pid."""
        current = next((p for p in state.processes if p.node == host and p.name == name), None)
        if current and procs.alive(current.pid, current.netns):
            return current.pid
        if current:
            state.processes.remove(current)
        log = self.store.logs / f"{host}-{name}.log"
        if cwd is not None:
            cwd.mkdir(parents=True, exist_ok=True)
        pid = procs.start(ns, argv, log, env, keep_mounts=keep_mounts, cwd=cwd)
        state.processes.append(ProcessRecord(name, host, ns, pid, list(argv), str(log)))
        self.store.save(state)
        return pid

    def store_url(self) -> str | None:
        """etcd: the URL node processes are given (every member's LAN address); None on SQLite."""
        state = self.store.load()
        if state is None or state.store != "etcd" or not state.etcd:
            return None
        return etcd_cluster.node_url(list(state.etcd.values()))

    def _up_node(self, state: LabState, index: int) -> None:
        name = plan.node_name(index)
        rec = state.nodes.get(name)
        if rec is None:
            rec = NodeRecord(
                name=name, index=index, netns=plan.node_netns(self.prefix, index), ip=plan.node_ip(index),
                pod_cidr=plan.pod_cidr(index), gateway=plan.pod_gateway(index),
                ext_ifname=plan.NODE_EXT_IFNAME, ext_mac=plan.node_mac(index),
                ext_peer_ifname=plan.node_uplink_peer(index),
            )
            state.nodes[name] = rec
            self.store.save(state)
        self._make_netns(rec.netns, router=True)
        cgroups.create(plan.node_cgroup(self.prefix, index))
        cgroups.create(plan.pods_cgroup(self.prefix, index))
        assert state.outside is not None
        node_end, port_end = wiring.make_uplink(
            state.outside.netns, state.outside.bridge, rec.ext_peer_ifname,
            rec.netns, rec.ext_ifname, rec.ext_mac, rec.ip, plan.LAN_PREFIXLEN,
        )
        rec.ext_ifindex, rec.ext_peer_ifindex = node_end.ifindex, port_end.ifindex

    # -- ownership ------------------------------------------------------------------------
    @property
    def owner(self) -> str:
        """What this lab's namespaces record as their owner (its state dir)."""
        return owner_tag(self.store.state_dir)

    def _make_netns(self, ns: str, router: bool) -> None:
        """Create (if missing) and mark as this state dir's. An existing one is this lab's:
        `up` refused any other (_refuse_others)."""
        if netns.create(ns):
            wiring.prepare(ns, router=router)
        netns.set_owner(ns, self.owner)

    def others(self, state: LabState | None = None) -> dict[str, str | None]:
        """Namespaces with this lab's names that are not this state dir's: name -> the
        state dir (owner_tag) that made them, or None (no mark: a lab of an older svcxdp,
        or one made and never marked). One this state dir marked is its own, and so is an
        unmarked one it records."""
        if state is None:
            state = self.store.load()
        recorded = set(state.netns_names()) if state is not None else set()
        return {ns: owner for ns, owner in self._owners().items()
                if owner != self.owner and not (owner is None and ns in recorded)}

    def _owners(self) -> dict[str, str | None]:
        """The namespaces with this lab's names and who made them (None: not marked)."""
        found = {}
        for ns in self._own_namespaces():
            owner = netns.owner(ns)
            if owner is not None or netns.exists(ns):   # not removed meanwhile
                found[ns] = owner
        return found

    def _refuse_others(self, state: LabState) -> None:
        """Before `up` makes anything: no namespace with the lab's names may be another
        state dir's, or this one's without its record (its processes may still run: a
        second agent beside the first fails)."""
        others = self.others(state)
        if others:
            raise LabError(describe_others(others, self.prefix, str(self.store.state_dir)))
        recorded = set(state.netns_names())
        unrecorded = sorted(ns for ns, owner in self._owners().items()
                            if owner == self.owner and ns not in recorded)
        if unrecorded:
            raise LabError(f"namespaces {', '.join(unrecorded)} were made by the lab of this state dir "
                           f"({self.store.state_dir}), whose record of them ({self.store.file}) is lost: "
                           f"`svcctl lab down --state-dir {self.store.state_dir}` removes them first")

    def _mesh(self, state: LabState) -> None:
        """Routes between nodes' pod CIDRs and permanent neighbours across the LAN."""
        assert state.outside is not None
        o = state.outside
        nodes = list(state.nodes.values())
        for n in nodes:
            routes = {m.pod_cidr: m.ip for m in nodes if m is not n}
            routes["0.0.0.0/0"] = o.ip  # stays in the lab: outside has no other link
            wiring.set_routes(n.netns, routes)
            neigh = {m.ip: m.ext_mac for m in nodes if m is not n}
            neigh[o.ip] = o.bridge_mac
            wiring.set_neighbours(n.netns, n.ext_ifname, neigh)
        wiring.set_neighbours(o.netns, o.bridge, {n.ip: n.ext_mac for n in nodes})
        # LoadBalancer IPs reach the nodes (their XDP programs serve them), as a BGP router
        # with every node as a peer would route them: ECMP, per flow.
        wiring.set_multipath_route(o.netns, plan.LB_POOL, [n.ip for n in nodes])

    def _seed_lb_pool(self) -> None:
        """Give LB-IPAM the lab's pool, unless the store has one (`svcctl lb-pool set`)."""
        store = open_store(self.store.state_dir)
        try:
            with store.transaction() as tx:
                if not pool_is_set(tx):
                    save_pool(tx, Pool.parse([plan.LB_POOL]))
        finally:
            store.close()

    def _start_node_processes(self, state: LabState, provider: NodeProcessProvider) -> None:
        for rec in state.nodes.values():
            for spec in provider(_node_info(rec), self):
                self._start_process(state, rec.name, rec.netns, spec.name, spec.argv, spec.env,
                                    keep_mounts=spec.keep_mounts)

    def route_pod_cidrs_from_outside(self) -> None:
        """Routes on the outside host to every node's pod CIDR via that node, as the LAN's
        router of a cluster without egress masquerading has: pods can then talk to servers
        on the outside host (the DNS upstream, an ExternalName's target) and get replies."""
        state = self._require_up()
        assert state.outside is not None
        wiring.set_routes(state.outside.netns, {n.pod_cidr: n.ip for n in state.nodes.values()})

    def start_outside_process(self, name: str, argv: Sequence[str]) -> int:
        """Run a server on the outside host (started once: a live one is left alone),
        recorded like the nodes' processes so `down` stops it."""
        with self.store.locked():
            state = self._require_up()
            assert state.outside is not None
            return self._start_process(state, "outside", state.outside.netns, name, list(argv))

    def down(self, on_down: Callable[[Lab], None] | None = None, force: bool = False) -> list[str]:
        """Stop every recorded process, remove every namespace of this state dir (their
        links go with them) and the lab's state folder. Returns the namespaces removed.

        Namespaces with the lab's names that another state dir made, or that no state
        records, are left alone (others() names them) unless `force`: then every namespace,
        process and cgroup with the lab's names goes, whoever made them (a lab whose state
        dir was lost)."""
        removed: list[str] = []
        with self.store.locked():
            state = self.store.load()
            if state is not None:
                self.prefix = state.prefix
            others = {} if force else self.others(state)
            doomed = [ns for ns in self._own_namespaces() if ns not in others]
            self._removing = doomed
            try:
                if on_down is not None and (state is not None or doomed):
                    on_down(self)
            finally:
                self._removing = None
            if state is not None:
                # etcd last: the others stop while their store still answers
                for p in sorted(state.processes, key=lambda p: p.name == "etcd"):
                    if p.netns not in others:
                        procs.stop(p.pid, p.netns)
                for pod in list(state.pods.values()):
                    if pod.netns in others:
                        continue
                    if self._teardown_pod(pod) and not pod.host_network:
                        removed.append(pod.netns)
                names = [n.netns for n in state.nodes.values()]
                names += [m.netns for m in state.etcd.values()]
                names += [state.outside.netns] if state.outside else []
                for ns in names:
                    if ns not in others and self._remove_netns(ns):
                        removed.append(ns)
                if state.made_etc_netns:
                    _rmdir_if_empty(ETC_NETNS)
            # Namespaces (and /etc/netns entries) of this state dir that an interrupted run
            # never recorded or never removed (forced: all with this lab's names).
            for ns in doomed:
                if self._remove_netns(ns):
                    removed.append(ns)
            if ETC_NETNS.is_dir():
                for d in ETC_NETNS.iterdir():
                    if self._own_name(d.name) and d.name not in others:
                        shutil.rmtree(d, ignore_errors=True)
            # The nodes' cgroups, by name (their socket hooks go with them): shared by every
            # lab with these names, so only once none of them is left.
            if not others and (state is not None or doomed or force):
                for cg in cgroups.list_names(self.prefix):
                    if self._own_cgroup(cg):
                        cgroups.remove(cg)
            shutil.rmtree(self.store.root, ignore_errors=True)   # etcd's data with it
            self.store.instances_file.unlink(missing_ok=True)
            if state is not None and state.store == "etcd":
                (self.store.state_dir / STORE_URL_FILE).unlink(missing_ok=True)
        if self.store.state_dir.name.startswith(plan.PREFIX):  # ours by name, and only if empty
            _rmdir_if_empty(self.store.state_dir)
        return sorted(set(removed))

    def node_names(self) -> list[str]:
        """The lab's nodes: those its state records; while `down` runs without a state
        (forced, or a state dir whose record is lost), those whose namespaces it removes."""
        state = self.store.load()
        if state is not None:
            return sorted(state.nodes, key=lambda n: plan.node_index(n) or 0)
        prefix = f"{self.prefix}-"
        names = [ns[len(prefix):] for ns in (self._removing or [])]
        return sorted((n for n in names if plan.node_index(n) is not None), key=plan.node_index)

    def _own_name(self, name: str) -> bool:
        return re.match(rf"^{re.escape(self.prefix)}-(node\d+|etcd\d+|outside|pod-.+)$", name) is not None

    def _own_cgroup(self, name: str) -> bool:
        return re.match(rf"^{re.escape(self.prefix)}-node\d+(-pods)?$", name) is not None

    def _own_namespaces(self) -> list[str]:
        return [n for n in netns.list_names(self.prefix) if self._own_name(n)]

    @staticmethod
    def _remove_netns(ns: str) -> bool:
        """True if the namespace existed (and is now removed)."""
        if not netns.exists(ns):
            return False
        procs.stop_all_in(ns)  # the namespace is ours, so everything in it is too
        return netns.delete(ns)

    # -- pods -----------------------------------------------------------------------------
    def add_pod(
        self,
        name: str,
        node: str | None = None,
        image: str = "busybox",
        ports: Iterable[PortSpec | int | tuple | dict] = (),
        *,
        timeout: float = 10.0,
        resolv_conf: str | None = None,
        host_network: bool = False,
    ) -> PodHandle:
        """Make a pod namespace on `node` (default: the node with fewest pods), wire it, start
        the server its image stands for and wait until its ports answer. `resolv_conf` is the
        pod's /etc/resolv.conf (default: ClusterFirst in namespace default). A hostNetwork pod
        gets no namespace of its own: its server runs in the node's, with the node's
        address, in the node's cgroup."""
        port_specs = _ports(ports)
        if not self.store.exists():   # no lab here: nothing to lock, nothing to create
            self._require_up()
        with self.store.locked():
            state = self._require_up()
            existing = state.pods.get(name)
            if existing is not None:
                if existing.phase == "Running" and netns.exists(existing.netns):
                    return _pod_handle(existing)
                self._teardown_pod(existing, state)  # half-made: start over
                del state.pods[name]
            node_rec = self._schedule(state, node)
            spec = server_for(image, port_specs)
            if host_network:
                rec = PodRecord(name=name, netns=node_rec.netns, node=node_rec.name, ip=node_rec.ip,
                                image=image, ports=port_specs, server=spec.kind, host_network=True)
            else:
                rec = PodRecord(
                    name=name, netns=plan.pod_netns(self.prefix, name), node=node_rec.name,
                    ip=self._allocate_ip(state, node_rec), image=image, ports=port_specs,
                    host_ifname=plan.pod_host_ifname(name), server=spec.kind,
                )
            if not host_network and any(p.netns == rec.netns for p in state.pods.values()):
                raise LabError(f"pod {name!r}: namespace {rec.netns} already used by another pod")
            state.pods[name] = rec
            self.store.save(state)  # recorded before anything exists
            try:
                self._build_pod(state, rec, node_rec, spec, timeout, resolv_conf)
            except BaseException:
                self._teardown_pod(rec, state)
                state.pods.pop(name, None)
                self.store.save(state)
                raise
            return _pod_handle(rec)

    def _build_pod(self, state: LabState, rec: PodRecord, node: NodeRecord, spec: Any, timeout: float,
                   resolv_conf: str | None) -> None:
        if rec.host_network:
            self._start_pod_server(state, rec, spec, timeout, plan.node_cgroup(self.prefix, node.index))
            return
        if netns.exists(rec.netns) and netns.owner(rec.netns) not in (None, self.owner):
            raise LabError(describe_others({rec.netns: netns.owner(rec.netns)}, self.prefix,
                                           str(self.store.state_dir)))
        self._make_netns(rec.netns, router=False)
        host, pod = wiring.make_pod_link(node.netns, rec.netns, rec.host_ifname, rec.pod_ifname, node.gateway, rec.ip)
        rec.host_ifindex, rec.host_mac, rec.pod_ifindex, rec.pod_mac = host.ifindex, host.mac, pod.ifindex, pod.mac
        state.made_etc_netns |= self._write_etc(rec, resolv_conf)
        self.store.save(state)
        self._start_pod_server(state, rec, spec, timeout, plan.pods_cgroup(self.prefix, node.index))

    def _start_pod_server(self, state: LabState, rec: PodRecord, spec: Any, timeout: float,
                          cgroup_name: str) -> None:
        log = self.store.logs / f"pod-{rec.name}.log"
        rec.pid = servers.start(spec, rec.name, rec.netns, log, self.store.data / rec.name, self.store.state_dir,
                                cgroups.create(cgroup_name))
        self.store.save(state)
        servers.wait_ready(spec, rec.netns, rec.ip, rec.pid, log, timeout)
        rec.phase = "Running"
        self.store.save(state)

    def _write_etc(self, rec: PodRecord, resolv_conf: str | None = None) -> bool:
        """/etc/netns/<ns>/{resolv.conf,hosts}: `ip netns exec` bind-mounts them over /etc
        (in a mount namespace of the command's own), so pod commands use the resolver the
        kubelet chose and know their own name, as in a real pod."""
        made_root = not ETC_NETNS.exists()
        d = ETC_NETNS / rec.netns
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(resolv_conf or (
            f"search default.svc.{plan.CLUSTER_DOMAIN} svc.{plan.CLUSTER_DOMAIN} {plan.CLUSTER_DOMAIN}\n"
            f"nameserver {plan.CLUSTER_DNS}\noptions ndots:5\n"
        ))
        (d / "hosts").write_text(f"127.0.0.1\tlocalhost\n{rec.ip}\t{rec.name}\n")
        rec.etc_dir = str(d)
        return made_root

    def _teardown_pod(self, rec: PodRecord, state: LabState | None = None) -> bool:
        """Stop the pod's server, remove its namespace and files; True if its namespace
        existed (a hostNetwork pod has none of its own: False)."""
        procs.stop(rec.pid, rec.netns, timeout=POD_STOP_TIMEOUT)
        if rec.host_network:   # the namespace is the node's: only the server goes
            shutil.rmtree(self.store.data / rec.name, ignore_errors=True)
            return False
        node = state.nodes.get(rec.node) if state else None
        if node is not None and rec.host_ifname:
            wiring.delete_link(node.netns, rec.host_ifname)  # the node side goes at once
        existed = self._remove_netns(rec.netns)
        if rec.etc_dir and Path(rec.etc_dir).parent == ETC_NETNS and Path(rec.etc_dir).name == rec.netns:
            shutil.rmtree(rec.etc_dir, ignore_errors=True)
        shutil.rmtree(self.store.data / rec.name, ignore_errors=True)
        return existed

    def remove_pod(self, name: str) -> bool:
        with self.store.locked():
            state = self.store.load()
            rec = state.pods.get(name) if state else None
            if state is None or rec is None:
                return False
            self._teardown_pod(rec, state)
            del state.pods[name]
            self.store.save(state)
            return True

    def _schedule(self, state: LabState, node: str | None) -> NodeRecord:
        if node is not None:
            if node not in state.nodes:
                raise LabError(f"no node {node!r} in the lab (nodes: {', '.join(sorted(state.nodes))})")
            return state.nodes[node]
        load = {n: 0 for n in state.nodes}
        for p in state.pods.values():
            load[p.node] = load.get(p.node, 0) + 1
        return min(state.nodes.values(), key=lambda n: (load[n.name], n.index))

    @staticmethod
    def _allocate_ip(state: LabState, node: NodeRecord) -> str:
        """Next free host after the last one handed out (like host-local IPAM), so a freed IP
        is not given to the next pod at once."""
        used = {p.ip for p in state.pods.values() if p.node == node.name}
        span = plan.POD_HOST_LAST - plan.POD_HOST_FIRST + 1
        for step in range(1, span + 1):
            host = plan.POD_HOST_FIRST + (node.last_host - plan.POD_HOST_FIRST + step) % span
            ip = plan.pod_ip(node.index, host)
            if ip not in used:
                node.last_host = host
                return ip
        raise LabError(f"{node.name}: pod CIDR {node.pod_cidr} is full")

    # -- queries --------------------------------------------------------------------------
    def status(self) -> LabStatus:
        state = self.store.load()
        if state is None:
            return LabStatus(False, str(self.store.state_dir), self.prefix, None)
        missing = [ns for ns in state.netns_names() if not netns.exists(ns)]
        dead = [f"{p.node}/{p.name}" for p in state.processes if not procs.alive(p.pid, p.netns)]
        dead += [f"pod/{p.name}" for p in state.pods.values() if p.pid and not procs.alive(p.pid, p.netns)]
        up = state.outside is not None and bool(state.nodes) and not missing
        return LabStatus(
            up=up, degraded=not up or bool(dead),
            state_dir=str(self.store.state_dir), prefix=state.prefix, outside=state.outside,
            nodes=sorted((_node_info(n) for n in state.nodes.values()), key=lambda n: n.index),
            pods=[_pod_handle(p) for p in state.pods.values()],
            processes=list(state.processes), missing=missing, dead=dead,
            store=state.store, etcd=sorted(state.etcd.values(), key=lambda m: m.index),
            store_url=etcd_cluster.node_url(list(state.etcd.values())) if state.etcd else None,
        )

    def nodes(self) -> list[NodeInfo]:
        return self.status().nodes

    def pod(self, name: str) -> PodHandle | None:
        state = self.store.load()
        rec = state.pods.get(name) if state else None
        return _pod_handle(rec) if rec else None

    def pod_alive(self, name: str) -> bool:
        """The pod's namespace exists and its server (if it has one) is still running."""
        pod = self.pod(name)
        if pod is None or pod.phase != "Running" or not netns.exists(pod.netns):
            return False
        return pod.pid is None or procs.alive(pod.pid, pod.netns)

    def pods(self, node: str | None = None) -> list[PodHandle]:
        state = self.store.load()
        if state is None:
            return []
        return [_pod_handle(p) for p in state.pods.values() if node is None or p.node == node]

    def attach_points(self, node: str | None = None) -> list[AttachPoint]:
        """Where the agent attaches XDP on each node: every pod veth's node side, and eth0."""
        state = self.store.load()
        return [] if state is None else attach_points(state, node)

    def netns_for(self, host: str) -> str:
        """A pod name, a node name (`node1`), `outside`, or one of the lab's namespace names."""
        state = self._require_up()
        if host == "outside":
            assert state.outside is not None
            return state.outside.netns
        if host in state.nodes:
            return state.nodes[host].netns
        if host in state.pods:
            return state.pods[host].netns
        if host in state.netns_names():
            return host
        raise LabError(f"no pod, node or host named {host!r} in the lab")

    def cgroup_for(self, host: str) -> Path | None:
        """The cgroup a command run on `host` joins: a node's (and a hostNetwork pod's) is
        the node cgroup, a pod's its node's pods cgroup; None for `outside`."""
        state = self._require_up()
        node = state.nodes.get(host)
        if node is not None:
            return cgroups.create(plan.node_cgroup(self.prefix, node.index))
        pod = state.pods.get(host)
        if pod is not None and pod.node in state.nodes:
            index = state.nodes[pod.node].index
            name = plan.node_cgroup if pod.host_network else plan.pods_cgroup
            return cgroups.create(name(self.prefix, index))
        return None

    def pods_cgroup_for(self, node: str) -> Path:
        state = self._require_up()
        if node not in state.nodes:
            raise LabError(f"no node {node!r} in the lab")
        return cgroups.create(plan.pods_cgroup(self.prefix, state.nodes[node].index))

    def exec(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """subprocess.run(argv) inside host's namespace and cgroup (kwargs go to
        subprocess.run)."""
        return netns.run(self.netns_for(host), argv, cgroup=self.cgroup_for(host), **kwargs)


def describe_others(others: dict[str, str | None], prefix: str, state_dir: str) -> str:
    """What `up` refuses and `down` leaves: namespaces with the lab's names (prefix `prefix`)
    that are not state dir `state_dir`'s, by owner, and how to remove them."""
    mine = owner_tag(state_dir)
    groups: dict[str | None, list[str]] = {}
    for ns, owner in sorted(others.items()):
        key = owner if owner is not None and owner != mine and owner_records(owner, ns) else None
        groups.setdefault(key, []).append(ns)
    lines = []
    for owner, names in sorted(groups.items(), key=lambda kv: kv[0] is None):
        listed = ", ".join(names)
        if owner is not None:
            lines.append(f"namespaces {listed} belong to the lab of state dir {owner}: use that state dir "
                         f"(--state-dir or $SVCXDP_STATE_DIR), or remove that lab with "
                         f"`svcctl lab down --state-dir {owner}`")
        else:
            lines.append(f"namespaces {listed} (prefix {prefix}) belong to no lab's state (its state dir was "
                         f"removed, or they were made by hand or by an older svcxdp): `svcctl lab down "
                         f"--force` removes every namespace, process and cgroup named {prefix}-*")
    return "\n".join(lines)


def _rmdir_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass
