"""svcctl agent --node NAME: run the node agent in the foreground."""
from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from controlplane.dataplane.layout import ALGORITHMS, const
from controlplane.errors import CommandError
from controlplane.gcpause import hold_long_lived
from controlplane.store.paths import add_store_flags

if TYPE_CHECKING:
    from .agent import Agent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the node agent: keep this node's XDP dataplane equal to the store")
    p.add_argument("--node", required=True, help="the node this agent serves (e.g. node1)")
    p.add_argument("--state-dir", help="store directory (env SVCXDP_STATE_DIR, default /var/lib/svcxdp)")
    add_store_flags(p)
    p.add_argument("--source", choices=["store", "kubernetes"],
                   help="where Services and EndpointSlices come from: svcxdp's store (default), or a "
                        "Kubernetes API server (kube-proxy replacement; implied by --kubeconfig)")
    p.add_argument("--kubeconfig", metavar="FILE",
                   help="with --source kubernetes: the API server and credentials (env KUBECONFIG; "
                        "default: the in-cluster service account)")
    p.add_argument("--instance", help="dataplane instance: bpffs pins under /sys/fs/bpf/svcxdp/INSTANCE "
                                      "(default: the node name)")
    p.add_argument("--lb-algorithm", default="random", choices=sorted(ALGORITHMS),
                   help="backend selection for services without a svcxdp.io/lb-algorithm annotation")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--interfaces", metavar="IF,IF...", help="attach to these interfaces of this namespace")
    where.add_argument("--discover", action="store_true",
                       help="attach to the default route's device and to every interface named with a "
                            "--pod-interface-prefix, followed through netlink events")
    where.add_argument("--attach-points", metavar="FILE",
                       help="JSON list of the interfaces to attach to, kept current by whoever runs them "
                            "(svcctl lab writes one per node)")
    p.add_argument("--pod-interface-prefix", default="", metavar="P,P...",
                   help="with --discover: pod interface name prefixes, e.g. veth,cali,lxc")
    p.add_argument("--uninstall", action="store_true",
                   help="detach this node's pinned program from the interfaces (--interfaces, --discover or "
                        "--attach-points) and remove its pins, then exit")
    p.add_argument("--xdp-mode", default="native", choices=["native", "generic"],
                   help="XDP mode of the external interfaces, and of pod interfaces whose veth peer "
                        "the agent gives a program (--attach-points)")
    p.add_argument("--pod-xdp-mode", default="auto", choices=["auto", "native", "generic"],
                   help="XDP mode of pod interfaces whose peer the agent does not run (--interfaces, "
                        "--discover): auto is generic, as native XDP on a veth drops the RSTs and ICMP "
                        "answers the program sends to a pod whose end has neither an XDP program nor GRO")
    p.add_argument("--node-zone", metavar="ZONE", type=_label_value,
                   help="the node's zone, for the endpoints' topology hints (trafficDistribution "
                        "PreferClose / PreferSameZone): Cluster-policy traffic goes to the endpoints hinted "
                        "for this zone when every ready endpoint has a zone hint and one names it. Default: "
                        "with --source kubernetes, the Node's topology.kubernetes.io/zone label (a Node "
                        "without it is read again until it has one); else none (zone hints ignored; node "
                        "hints still apply)")
    p.add_argument("--nodeport-addresses", default="", metavar="CIDR,...",
                   help="serve NodePorts only on the node addresses inside these CIDRs "
                        "(default: every address of the external interfaces)")
    p.add_argument("--healthz-port", type=int, default=10256, help="0 disables the health server")
    p.add_argument("--metrics-bind-address", default="0.0.0.0:10249",
                   help="IP:PORT of /metrics and /proxyMode, as kube-proxy's (port 0 disables them)")
    p.add_argument("--check-interval", type=float, default=30.0,
                   help="seconds between consistency checks of the maps against the store, at least")
    p.add_argument("--check-max-share", type=_share, default=0.005, metavar="FRACTION",
                   help="the most of the agent's time consistency checks may take: a check that took T "
                        "puts the next T / FRACTION away when that is longer than --check-interval "
                        "(changes that arrive during a check wait for it; default 0.005)")
    p.add_argument("--fib-redirect", action=argparse.BooleanOptionalAction, default=None,
                   help="send translated packets straight to the egress device (FIB lookup + redirect) "
                        "where the agent made it a redirect target (a veth whose peer it gave an XDP "
                        "program); --no-fib-redirect: every one through the node's stack. Default: on "
                        "with --attach-points in native mode (the only way a device becomes a target), "
                        "off otherwise, so no packet pays a lookup that can only end in the stack")
    p.add_argument("--fib-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="with --fib-redirect: remember each CPU's last FIB answers per destination and "
                        "ingress device, invalidated by a netlink watch of this namespace's routes, "
                        "neighbours, links, addresses and rules (bpf/fib.h; off by itself while policy "
                        "rules or multipath routes exist). --no-fib-cache: a lookup for every packet")
    p.add_argument("--managed-neighbours", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the gateways of routes through the external interfaces as managed "
                        "neighbours (Linux 5.16), which the kernel resolves ahead of need: an XDP_TX to "
                        "another node's backend cannot resolve one (controlplane/agent/nexthops.py)")
    p.add_argument("--stale-dataplane", default="replace", choices=["replace", "refuse"],
                   help="pinned maps of another layout (an upgrade that changed a map, a changed size flag): "
                        "replace them with new ones, forgetting the node's tracked flows (default), or "
                        "refuse to start")
    p.add_argument("--ct-size", type=int, help="conntrack entries (default 1048576)")
    # The maps a cluster's size fills (bpf/svcxdp.h's defaults): the writer refuses a
    # frontend that does not fit, by name, before writing anything of it (plan.check_capacity).
    p.add_argument("--max-services", type=int, metavar="N",
                   help=f"frontends (each port of each way in, twins included; default {const('DEFAULT_MAX_SERVICES')})")
    p.add_argument("--max-backends", type=int, metavar="N",
                   help=f"backends: one per endpoint of each frontend (default {const('DEFAULT_MAX_BACKENDS')})")
    p.add_argument("--max-slots", type=int, metavar="N",
                   help=f"selection slots, over all frontends: one per backend taking new flows (wrr: its "
                        f"weighted cycle; default {const('DEFAULT_MAX_SLOTS')})")
    p.add_argument("--affinity-size", type=int, metavar="N",
                   help=f"ClientIP affinity entries: client addresses x affinity services "
                        f"(default {const('DEFAULT_AFFINITY_SIZE')})")
    p.add_argument("--source-ranges-size", type=int, metavar="N",
                   help=f"loadBalancerSourceRanges CIDRs over all LoadBalancer frontends, each counted "
                        f"again for its twin (default {const('DEFAULT_SOURCE_RANGES')})")
    p.add_argument("--ct-unconfirmed-size", type=int, metavar="N",
                   help="entries of ct_unconfirmed, where flows from outside the cluster (NodePort, "
                        "LoadBalancer, external IPs) wait until their second packet: a power of two, the "
                        f"table being {const('CT_SET_WAYS')}-way sets (default: --ct-size / "
                        f"{const('CT_UNCONFIRMED_SHARE')}, rounded down to one). Under a flood of spoofed first "
                        f"packets a handshake's entry lasts until {const('CT_SET_WAYS') - 1} later ones land in "
                        "its set, about N / flood rate, which must outlast the client's round trip")
    p.add_argument("--ct-unconfirmed-pod-size", type=int, metavar="N",
                   help="the same for flows from pods, ct_unconfirmed_pod, also a power of two (default: "
                        f"{const('DEFAULT_CT_UNCONFIRMED_POD')}, at most the former: it stays in cache, and a "
                        "pod's handshake completes within an in-cluster round trip)")
    p.add_argument("--tcp-timeout", type=int, metavar="S",
                   help="idle timeout of an established TCP flow, seconds (default 21600)")
    p.add_argument("--tcp-close-timeout", type=int, metavar="S",
                   help="idle timeout of a closed TCP flow (both FINs, or a RST), seconds (default 10)")
    p.add_argument("--tcp-half-close-timeout", type=int, metavar="S",
                   help="idle timeout of a half-closed TCP flow (one side's FIN: the other may still "
                        "send), seconds (default 3600, kube-proxy's CLOSE_WAIT)")
    p.add_argument("--udp-timeout", type=int, metavar="S", help="idle timeout of a UDP flow, seconds (default 60)")
    p.add_argument("--reject-rate", type=int, metavar="N",
                   help="rejects answered (a service without endpoints: TCP RST, ICMP port unreachable) per "
                        f"second and CPU (default {const('DEFAULT_REJECT_RATE')}, the kernel's for its ICMP "
                        "errors, which it counts per node); those over it are dropped unanswered")
    p.add_argument("--reject-burst", type=int, metavar="N",
                   help=f"... and in a burst, per CPU (default {const('DEFAULT_REJECT_BURST')})")
    p.add_argument("--ct-gc-interval", type=float, default=5.0, metavar="S",
                   help="seconds between sweeps of the idle-flow GC, each reading at most 65,536 entries "
                        "of each conntrack table and removing those past their timeout (0 disables it)")
    p.add_argument("--socket-lb-cgroup", action="append", default=[], metavar="PATH",
                   help="attach the socket-level load balancer (cgroup connect/sendmsg/recvmsg/"
                        "getpeername hooks) to this cgroup v2 directory; 'root' = the cgroup2 root "
                        "(a real node: every process on it). Repeatable (the lab passes its node's "
                        "cgroup, and its pods' with SVCXDP_SOCKET_LB_PODS=1)")
    p.add_argument("--node-ip", help="the node's address, which its unbound sockets' packets carry: their "
                   "ClientIP affinity key and the source a LoadBalancer IP's source ranges judge")
    p.add_argument("--socket-reap-interval", type=float, default=30.0, metavar="S",
                   help="with --socket-lb-cgroup: seconds between whole sweeps for connected UDP sockets "
                        "of removed backends (those a sync removes are aborted right after it anyway; "
                        "0: only at start and after syncs)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logs of svcxdp's own (each change's endpoint addresses, every GC pass)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from controlplane.dataplane.config import ConfigError, DataplaneConfig
    from controlplane.dataplane.program import Dataplane, DataplaneError
    from .agent import Agent
    from .desired import NodeConfig
    from .health import Health, busy_port_message, serve
    from .attach_sources import FileAttachPoints
    from .healthcheck import ServiceHealthServers
    from .interfaces import InterfaceManager
    from .node_interfaces import NodeInterfaces, pin_programs, uninstall
    from .nodeport_addresses import interface_addresses, parse_cidrs, select
    from .instance_lock import hold_instance

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s agent[{args.node}] %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.verbose:   # svcxdp's loggers only: the libraries' debug output (pyroute2's) drowns them
        logging.getLogger("svcxdp").setLevel(logging.DEBUG)
    log = logging.getLogger("svcxdp.agent")
    try:
        cidrs = parse_cidrs(args.nodeport_addresses)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    _bind_address(args.metrics_bind_address)   # a bad flag fails before anything is loaded
    if not args.ct_gc_interval >= 0:
        log.error("--ct-gc-interval %s: must be a number of seconds >= 0 (0 disables the GC)", args.ct_gc_interval)
        return 2
    if not args.socket_reap_interval >= 0:
        log.error("--socket-reap-interval %s: must be a number of seconds >= 0 (0: no periodic sweep)",
                  args.socket_reap_interval)
        return 2
    try:
        extra = dataplane_sizes(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if not 0 <= args.healthz_port <= 65535:
        log.error("--healthz-port %s: must be a port number (0 disables the health server)", args.healthz_port)
        return 2
    redirect, why = fib_redirect_choice(args)
    log.info("forwarding: %s (%s)", "FIB lookup + redirect to targets" if redirect else "the node's stack", why)
    try:
        config = DataplaneConfig(instance=args.instance or args.node, fib_redirect=redirect,
                                 replace_stale=args.stale_dataplane == "replace", **extra)
    except ConfigError as exc:   # (e.g. --max-backends too large for this machine's CPUs)
        log.error("%s", exc)
        return 2
    held = hold_instance(config.instance)   # noqa: F841 - held until the agent returns
    node_interfaces = None
    if args.interfaces or args.discover:
        node_interfaces = NodeInterfaces(
            names=[n for n in args.interfaces.split(",") if n] if args.interfaces else None,
            pod_prefixes=[p for p in args.pod_interface_prefix.split(",") if p])
    if args.uninstall:
        from controlplane.dataplane.program import reset
        targets = node_interfaces() if node_interfaces else \
            FileAttachPoints(args.attach_points)() if args.attach_points else []
        detached = uninstall(config.pin_dir, targets)
        detached += _detach_socket_lb(config.pin_dir, args.socket_lb_cgroup)
        log.info("detached from %s; pins removed: %s", ", ".join(detached) or "no interface",
                 reset(config))
        from .nexthops import forget
        log.info("managed next-hop neighbours removed: %s", ", ".join(forget(None)) or "none")
        return 0
    # The health server before anything is built: a busy port (kube-proxy's, 10256) fails the
    # agent with one line and nothing loaded, attached or pinned; once it listens the port
    # is the agent's (a socket only bound could still be taken: SO_REUSEADDR), and until
    # the first sync /healthz answers 503, /livez 200.
    health = Health(args.node)
    if args.healthz_port:
        try:
            serve(health, port=args.healthz_port)
        except OSError as exc:
            raise CommandError(busy_port_message(args.healthz_port, exc)) from None
    source, feed, api = _open_source(args)
    stop = threading.Event()
    zone = _node_zone(args, api, stop, log)   # (on the API: read beside the load and the first list)
    try:
        if args.socket_lb_cgroup:   # the socket hooks are loaded from bcc's program object
            dp = Dataplane.load(config)
            pin_programs(dp.prog_fd, dp.external_prog_fd, config.pin_dir)
            how = "compiled and loaded"
        else:   # compiled by a child process unless the pins hold this build; no bcc/LLVM here
            dp = Dataplane.open(config)
            how = "built and loaded by a child process" if dp.built else "adopted from its pins (unchanged build)"
    except DataplaneError as exc:   # the node's fault (no bpffs, a kernel that refuses it): one line
        raise CommandError(str(exc)) from None
    log.info("dataplane loaded (%s): prog id %d, maps pinned in %s; rejects answered at most %d a second "
             "per CPU, in bursts of %d", how, dp.prog_id, config.pin_dir, config.reject_rate, config.reject_burst)
    interfaces = None
    if args.attach_points:
        interfaces = InterfaceManager(dp, FileAttachPoints(args.attach_points), args.xdp_mode,
                                      args.pod_xdp_mode)
    elif node_interfaces is not None:
        interfaces = InterfaceManager(dp, node_interfaces, args.xdp_mode, args.pod_xdp_mode)
    else:
        log.warning("no --interfaces, --discover or --attach-points: the program is attached nowhere")
    attach_socket_lb = functools.partial(_attach_socket_lb, dp, list(args.socket_lb_cgroup), args.node_ip, log)
    socket_lb = bool(args.socket_lb_cgroup)
    if not dp.replaced:   # (a replaced dataplane's hooks wait for its first sync: Agent.when_filled)
        attach_socket_lb()
    addresses: tuple[str, ...] = ()
    if interfaces is not None:
        addresses = select([a for t in interfaces.external_targets()
                            for a in interface_addresses(t.netns, t.ifindex)], cidrs)
    log.info("NodePorts served on %s", ", ".join(addresses) or "no address")
    # healthCheckNodePorts listen where NodePorts are served, as kube-proxy's (all addresses if none known)
    service_health = ServiceHealthServers(args.node, lambda: health.report()[0] == 200, addresses or ("0.0.0.0",))
    if feed is not None and not feed.wait_synced(timeout=30):
        log.warning("the Kubernetes API has not answered the first list yet; the dataplane keeps its state "
                    "(/healthz 503) until it does")
    agent = Agent(source, NodeConfig(args.node, args.lb_algorithm, addresses, zone.zone), dp, interfaces, health,
                  check_every_s=args.check_interval, service_health=service_health,
                  check_max_share=args.check_max_share)
    if dp.replaced and socket_lb:
        agent.when_filled = attach_socket_lb
    ct_gc = None
    if args.ct_gc_interval > 0:
        from controlplane.dataplane.ctgc import ConntrackGC
        ct_gc = ConntrackGC(dp)
    agent.metrics = _serve_metrics(args.metrics_bind_address, dp, agent, log,
                                   ct_gc.entry_counts if ct_gc is not None else None)
    zone.tell(agent)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if socket_lb:
        from .sockreap_loop import SocketReaper
        reaper = SocketReaper(dp, log, args.socket_reap_interval or None)
        agent.udp_backends_left = reaper.left
        threading.Thread(target=reaper.run, args=(stop,), name="sockreaper", daemon=True).start()
    if interfaces is not None and args.managed_neighbours:
        _keep_next_hops(interfaces, stop)
    if ct_gc is not None:
        from .ctgc_loop import gc_loop
        threading.Thread(target=gc_loop, args=(ct_gc, stop, log, args.ct_gc_interval),
                         name="ctgc", daemon=True).start()
    fib_watch = None
    if config.fib_redirect and args.fib_cache:
        from controlplane.dataplane import fibwatch
        fib_watch = fibwatch.start(dp.table(fibwatch.MAP))
        log.info("FIB result cache: %s", f"on, generation {fib_watch.gen}" if fib_watch.gen
                 else f"off ({fib_watch.state.why_not() or 'its route watcher stopped: see above'})")
    # The agent's bulk work leaves ~5 containers per endpoint alive for good: kept out
    # of the collector's full walks, which otherwise stall changes (gcpause's text)
    hold_long_lived()
    log.info("gc: the long-lived heap is held out of collections, swept when quiet once it has doubled")
    agent.run(stop)
    if fib_watch is not None:
        fib_watch.stop()   # nobody watches the routing any more: the cache goes off
    if interfaces is not None:
        interfaces.close()
    service_health.close()
    if feed is not None:
        feed.close()
    dp.settle_writes()
    log.info("agent stopping; the dataplane stays attached and pinned")
    return 0


def _keep_next_hops(interfaces, stop: threading.Event) -> None:
    """A thread per namespace of the external interfaces keeps their next hops managed
    neighbours (nexthops.py)."""
    from .nexthops import NextHopNeighbours

    def external_in(netns: str) -> frozenset[int]:
        return frozenset(t.ifindex for t in interfaces.external_targets() if t.netns == netns)
    for netns in sorted({t.netns for t in interfaces.external_targets()}):
        keeper = NextHopNeighbours(netns or None, functools.partial(external_in, netns))
        threading.Thread(target=keeper.run, args=(stop,), name="nexthops", daemon=True).start()


def dataplane_sizes(args: argparse.Namespace) -> dict[str, int]:
    """The DataplaneConfig fields the map-size, table-size, timeout and reject-budget flags set (those given);
    ValueError naming the flag of a value that is not a positive integer, of a reject
    budget above its bound, or of an unconfirmed table's size that is not a power of two
    of whole sets."""
    flags = {"max_services": ("--max-services", args.max_services),
             "max_backends": ("--max-backends", args.max_backends),
             "max_slots": ("--max-slots", args.max_slots),
             "affinity_size": ("--affinity-size", args.affinity_size),
             "source_ranges_size": ("--source-ranges-size", args.source_ranges_size),
             "ct_size": ("--ct-size", args.ct_size),
             "ct_unconfirmed": ("--ct-unconfirmed-size", args.ct_unconfirmed_size),
             "ct_unconfirmed_pod": ("--ct-unconfirmed-pod-size", args.ct_unconfirmed_pod_size),
             "tcp_timeout_s": ("--tcp-timeout", args.tcp_timeout),
             "tcp_close_timeout_s": ("--tcp-close-timeout", args.tcp_close_timeout),
             "tcp_half_close_timeout_s": ("--tcp-half-close-timeout", args.tcp_half_close_timeout),
             "udp_timeout_s": ("--udp-timeout", args.udp_timeout),
             "reject_rate": ("--reject-rate", args.reject_rate),
             "reject_burst": ("--reject-burst", args.reject_burst)}
    for flag, value in flags.values():
        if value is not None and value <= 0:
            raise ValueError(f"{flag} {value}: must be a positive integer")
    from controlplane.dataplane.config import MAX_REJECT_BURST, MAX_REJECT_RATE, set_table_size_problem
    for (flag, value), most in ((flags["reject_rate"], MAX_REJECT_RATE), (flags["reject_burst"], MAX_REJECT_BURST)):
        if value is not None and value > most:
            raise ValueError(f"{flag} {value}: at most {most:,}")
    for flag, value in (flags["ct_unconfirmed"], flags["ct_unconfirmed_pod"]):
        problem = None if value is None else set_table_size_problem(value)
        if problem:
            raise ValueError(f"{flag} {value}: {problem}")
    return {field: value for field, (_, value) in flags.items() if value is not None}


def fib_redirect_choice(args: argparse.Namespace) -> tuple[bool, str]:
    """Whether to build the FIB redirect (bpf/fib.h), and why. A device becomes a
    redirect target only when the agent gives its veth peer a program, which it does for
    --attach-points entries with a peer, in native mode. Without any target, every
    translated packet would pay the lookup (~100 ns established, ~160 ns new flow in
    test-run on this project's machines) and then go to the stack all the same."""
    if args.fib_redirect is not None:
        return args.fib_redirect, "--fib-redirect" if args.fib_redirect else "--no-fib-redirect"
    if not args.attach_points:
        return False, "no --attach-points: no device can be a redirect target"
    if args.xdp_mode != "native":
        return False, f"--xdp-mode {args.xdp_mode}: veths take redirected frames in native mode only"
    return True, "--attach-points in native mode: veth peers become redirect targets"


def _open_source(args: argparse.Namespace):
    """(the agent's Source, then the KubeFeed and its ApiClient when it is the Kubernetes
    API, else None and None)."""
    if (args.source or ("kubernetes" if args.kubeconfig else "store")) == "store":
        from controlplane.store.paths import open_store_from_args
        return open_store_from_args(args), None, None
    if args.store:
        raise CommandError("--store and --source kubernetes: the agent reads one source; choose one")
    from controlplane.kubeapi.connect import KubeConfigError, api_client
    from controlplane.kubeapi.feed import KubeFeed
    try:
        api = api_client(args.kubeconfig)
    except KubeConfigError as exc:
        raise CommandError(str(exc)) from None
    feed = KubeFeed(api).start()
    return feed, feed, api


class NodeZone:
    """The node's zone as found so far, handed to the agent once it exists: the Node is
    read beside the dataplane's load and the first list (an API server that does not
    answer delays nothing), and its zone may come before the agent is made or after."""

    def __init__(self, zone: str, log: logging.Logger) -> None:
        self.zone = zone
        self._log = log
        self._agent: Agent | None = None
        self._lock = threading.Lock()

    def found(self, zone: str) -> None:
        """The Node's zone label (follow_node_zone)."""
        self._log.info("node zone: %s (its Node's label)", zone)
        with self._lock:
            self.zone = zone
            if self._agent is not None:
                self._agent.set_zone(zone)

    def tell(self, agent: Agent) -> None:
        """From now on `agent` follows the zone found (one found meanwhile included)."""
        with self._lock:
            self._agent = agent
            agent.set_zone(self.zone)


def _node_zone(args: argparse.Namespace, api, stop: threading.Event, log: logging.Logger) -> NodeZone:
    """--node-zone; else, on the Kubernetes source (api: None for the store), its Node's
    zone label, read now and again until the Node has one (follow_node_zone, until
    `stop`); else none (zone hints ignored)."""
    if args.node_zone is not None or api is None:
        log.info("node zone: %s", args.node_zone or "none (zone topology hints ignored)")
        return NodeZone(args.node_zone or "", log)
    from controlplane.kubeapi.node import follow_node_zone
    zone = NodeZone("", log)
    follow_node_zone(api, args.node, zone.found, stop, log=log)
    return zone


def _label_value(text: str) -> str:
    """--node-zone: a label value, as the Node's label would be."""
    from controlplane.api.validation.names import label_value
    problems = label_value(text)
    if problems:
        raise argparse.ArgumentTypeError(f"{text!r}: not a label value: {'; '.join(problems)}")
    return text


def _share(text: str) -> float:
    """--check-max-share: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction greater than 0 and at most 1")
    return value


def _bind_address(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    if not port.isdigit() or not host or int(port) > 65535:
        raise CommandError(f"--metrics-bind-address {bind!r}: expected IP:PORT")
    return host.strip("[]"), int(port)


def _serve_metrics(bind: str, dp, agent, log, entry_counts=None):
    """/metrics (kube-proxy's sync metrics, the datapath's svcxdp_*) on --metrics-bind-address;
    `entry_counts`: the conntrack GC's counts of the tables it walks (read, not re-counted)."""
    from prometheus_client import CollectorRegistry

    from .metrics import AgentNaming, DataplaneCollector, GcPauses, SyncMetrics, serve
    host, port = _bind_address(bind)
    if port == 0:
        return None
    registry = CollectorRegistry()
    sync = SyncMetrics(registry)
    registry.register(GcPauses())
    try:
        serve(registry, host, port, DataplaneCollector(dp, AgentNaming(agent), entry_counts))
    except OSError as exc:   # as kube-proxy: the proxy keeps working without its metrics
        log.error("cannot serve metrics on %s: %s", bind, exc)
        return None
    log.info("metrics served on %s", bind)
    return sync


def _detach_socket_lb(pin_dir, paths: list[str]) -> list[str]:
    """The socket hooks' pinned programs off each --socket-lb-cgroup (for --uninstall)."""
    from pathlib import Path

    from controlplane import cgroups
    from controlplane.dataplane.sockhooks import detach_pinned

    out = []
    for raw in dict.fromkeys(paths):
        path = cgroups.mount() if raw == "root" else Path(raw)
        if detach_pinned(pin_dir, path):
            out.append(f"cgroup {path}")
    return out


def _attach_socket_lb(dp, paths: list[str], node_ip: str | None, log) -> bool:
    """Attach the socket hooks to each cgroup (replacing this instance's earlier
    programs in place), keyed for affinity by the node's address."""
    from pathlib import Path

    from controlplane import cgroups

    if not paths:
        return False
    from controlplane.dataplane.sockhooks import own_netns_cookie
    # The agent runs in the node's network namespace: sockets there are the node's. Without
    # --node-ip their unbound source is unknown (affinity keys them by 0.0.0.0; a
    # LoadBalancer IP with source ranges is left to their packets).
    dp.set_sock_config(node_ip, own_netns_cookie())
    raws = list(dict.fromkeys(paths))
    targets = [cgroups.mount() if raw == "root" else Path(raw) for raw in raws]
    # One call for all: a restarted agent's programs replace the pinned ones on every
    # cgroup before the pins move on to them.
    from controlplane.dataplane.sockhooks import SockHookError
    try:
        dp.sock_hooks.attach(*targets, allow_root="root" in raws)
    except SockHookError as exc:   # (a bad --socket-lb-cgroup: one line, and the agent stops)
        raise CommandError(str(exc)) from None
    for path in targets:
        log.info("socket-level load balancing attached to cgroup %s", path)
    return True
