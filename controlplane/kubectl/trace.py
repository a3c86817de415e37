"""svcctl trace --node N SRC[:PORT] DST:PORT[/PROTO] [--run] [-o json]

What a node's XDP dataplane does with one packet and why: the frontend it matches, the
flow's conntrack entry, the client's affinity entry, the backend chosen and how, the
rewrite and the verdict — read from the node's pinned maps without building the
program (controlplane.dataplane.trace). Where the packet arrives (a pod interface or
the node's external one) is --entry, else what its source is when the store knows it
(a pod of this node or of another, another node: source_entry), else what its
destination is. `--run` then sends that packet through the pinned program with
BPF_PROG_TEST_RUN and shows what it did beside the prediction; like the real packet, it
leaves its mark (a new flow is recorded, counters count). `--entry socket` traces
instead what the node's socket hooks do when a socket of the node (SRC: its bound
address, 0.0.0.0 unbound; PORT default 0) connects or sends to DST:PORT; a cgroup hook
cannot be test-run, so not with --run.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field

from controlplane.api.pod import FAILED, SUCCEEDED, Pod
from controlplane.controllers.service_view import load_service_views
from controlplane.errors import CommandError
from controlplane.store.interface import StoreReader

from .frontends import Owners
from .options import add_node_timeouts, common_parent, node_timeouts
from .session import Session, command

TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
DEFAULT_SPORT = 40000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", parents=[common_parent()],
                       help="what a node's dataplane does with a packet, and why (from its maps)")
    p.add_argument("source", metavar="SRC[:PORT]",
                   help=f"the client (port default {DEFAULT_SPORT}, --entry socket 0; no protocol: it goes "
                        "on DST); --entry socket: the socket's bound address, 0.0.0.0 for an unbound one")
    p.add_argument("destination", metavar="DST:PORT[/PROTO]", help="where the packet goes (protocol default TCP)")
    p.add_argument("--node", required=True, help="the node whose dataplane to read (a lab node, or an agent's --node)")
    p.add_argument("--instance", default=None, help=argparse.SUPPRESS)
    p.add_argument("--entry", choices=("pod", "external", "socket"), default=None,
                   help="where the packet arrives: a pod interface or the node's external interface "
                        "(default, from the store's pods: pod when SRC is a pod on --node, external when "
                        "it is a pod on another node or another node's address; else external when "
                        "DST:PORT is a NodePort/LB IP/externalIP frontend); socket: a socket of the node "
                        "itself connecting to DST:PORT, through the socket hooks")
    p.add_argument("--tcp-flags", default=None, metavar="FLAGS",
                   help="TCP flags of the packet, letters of FSRPA (default: S for a new flow, A for a known one)")
    p.add_argument("--run", action="store_true",
                   help="also send the packet through the node's program (BPF_PROG_TEST_RUN); it changes "
                        "state as the packet would: records the flow, moves round-robin, counts")
    p.add_argument("--ingress", default=None, metavar="IFNAME",
                   help="--run: the interface it arrives on (default: the lab node's, else none)")
    p.add_argument("-o", "--output", choices=("json",), default=None, help="output format")
    add_node_timeouts(p)
    p.set_defaults(func=run_trace)


def parse_endpoint(text: str, what: str, port_required: bool,
                   protocol_allowed: bool = True) -> tuple[str, int | None, str | None]:
    """ADDR[:PORT][/PROTO] -> (addr, port, protocol). Every part written must say
    something: an empty port or protocol is refused, not taken for the default, and a
    protocol where none is allowed (a source's) is refused, not dropped."""
    body, slash, proto = text.partition("/")
    if slash and not protocol_allowed:
        raise CommandError(f"{what} {text!r}: a source has no protocol (it goes on DST: ADDR:PORT/PROTO)")
    if slash and not proto:
        raise CommandError(f"{what} {text!r}: no protocol after '/' (TCP or UDP; without '/': TCP)")
    addr, colon, port = body.partition(":")
    _check_ipv4(text, what, body, addr, port)
    number = None
    if colon:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise CommandError(f"{what} {text!r}: port {port!r} must be 1-65535")
        number = int(port)
    elif port_required:
        raise CommandError(f"{what} {text!r}: a port is required (ADDR:PORT)")
    if proto and proto.upper() not in ("TCP", "UDP"):
        raise CommandError(f"{what} {text!r}: protocol {proto!r} is not served by the dataplane (TCP, UDP)")
    return addr, number, proto.upper() or None


def _check_ipv4(text: str, what: str, body: str, addr: str, port: str) -> None:
    """The address before the port is IPv4. A second ':' means an IPv6 address (or a typo):
    the whole ADDR[:PORT] is named, since where its address ends cannot be told."""
    if ":" in port:
        raise CommandError(f"{what} {text!r}: {body!r} is not an IPv4 address (the dataplane serves IPv4 only)")
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise CommandError(f"{what} {text!r}: {addr!r} is not an IPv4 address" if addr else
                           f"{what} {text!r}: the address is missing") from None


def parse_flags(text: str | None) -> int | None:
    if text is None:
        return None
    bad = [c for c in text.upper() if c not in TCP_FLAGS]
    if bad or not text:
        raise CommandError(f"--tcp-flags {text!r}: expected letters of {''.join(TCP_FLAGS)}")
    value = 0
    for c in text.upper():
        value |= TCP_FLAGS[c]
    return value


def flag_names(value: int) -> str:
    names = {0x01: "FIN", 0x02: "SYN", 0x04: "RST", 0x08: "PSH", 0x10: "ACK"}
    return ",".join(n for bit, n in names.items() if value & bit) or "none"


# ---- where the packet arrives, when --entry is not given --------------------------------
@dataclass(frozen=True)
class PodAt:
    name: str                  # namespace/name
    node: str


@dataclass
class Whereabouts:
    """Which addresses are pods and nodes, and where: from the store's Pods (podIP and
    spec.nodeName; a node's address from its pods' hostIP) and the lab's node records."""
    pods: dict[str, PodAt] = field(default_factory=dict)     # pod IP -> the pod
    nodes: dict[str, str] = field(default_factory=dict)      # node address -> node name

    @property
    def node_names(self) -> set[str]:
        return {p.node for p in self.pods.values()} | set(self.nodes.values())


FINISHED = (SUCCEEDED, FAILED)   # a finished pod's IP may be another's already


def whereabouts(store: StoreReader, state_dir: str | None) -> Whereabouts:
    """Where the pods and nodes are. The Pods are read as stored documents, not decoded
    into objects: a few fields of each are all that is needed."""
    w = Whereabouts()
    for doc in store.iter_documents(Pod):
        spec, status, meta = doc.get("spec") or {}, doc.get("status") or {}, doc.get("metadata") or {}
        node = spec.get("nodeName")
        if not node:
            continue
        if status.get("hostIP"):
            w.nodes[status["hostIP"]] = node
        # a hostNetwork pod's address is its node's, covered by hostIP
        if status.get("podIP") and not spec.get("hostNetwork") and status.get("phase") not in FINISHED:
            w.pods[status["podIP"]] = PodAt(f"{meta.get('namespace')}/{meta.get('name')}", node)
    w.nodes.update(_lab_node_addresses(state_dir))
    return w


def _lab_node_addresses(state_dir: str | None) -> dict[str, str]:
    """The lab's nodes (a node without pods has no hostIP in the store), if a lab is there."""
    from controlplane.lab.state import StateStore
    try:
        state = StateStore(state_dir).load()
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {n.ip: n.name for n in state.nodes.values()} if state else {}


def source_entry(w: Whereabouts, node: str, src: str) -> tuple[str | None, str]:
    """The entry point a packet from `src` arrives on at `node`, and why; (None, "") when
    the source does not tell. The destination cannot tell: a pod's packet to a NodePort
    comes in on its veth (and meets the cluster-scope twin), a remote backend's reply to
    a source-NATed flow comes in from the wire to a port that is no frontend."""
    pod = w.pods.get(src)
    if pod is not None and pod.node == node:
        return "pod", f"SRC is pod {pod.name} on {node}"
    if node not in w.node_names:   # the store does not know this node: where a pod is tells nothing
        return None, ""
    if pod is not None:
        return "external", f"SRC is pod {pod.name} on {pod.node}, another node"
    other = w.nodes.get(src)
    if other is not None and other != node:
        return "external", f"SRC is an address of {other}, another node"
    return None, ""


def entry_reason(args: argparse.Namespace, from_source: str, entry: str) -> str:
    """Why the trace ran at `entry`, for the reader to check the assumption."""
    if args.entry:
        return "as given (--entry)"
    if from_source:
        return from_source
    if entry == "external":
        return ("DST is a NodePort/LB IP/externalIP frontend, SRC no pod or other node's address known here "
                "(for a pod's packet: --entry pod)")
    return "DST is no NodePort/LB IP/externalIP frontend, SRC no pod or other node's address known here"


def _ingress(args: argparse.Namespace, entry: str) -> tuple[str | None, int]:
    """(network namespace, ifindex) the packet arrives on for --run: the lab node's own
    namespace (its external interface for the external entry point), else this one."""
    from controlplane.lab.state import StateStore
    try:
        points = json.loads(StateStore(args.state_dir).attach_file(args.node).read_text())
    except (OSError, ValueError):
        points = []
    netns = next((p["netns"] for p in points if p.get("netns")), None)
    if args.ingress:
        return netns, _ifindex(netns, args.ingress)
    if entry == "external":
        ext = next((p for p in points if p.get("role") == "external"), None)
        if ext is not None:
            return ext["netns"], int(ext["ifindex"])
    return netns, 0


def _ifindex(netns: str | None, name: str) -> int:
    import socket

    from controlplane.lab import netns as lab_netns
    try:
        return lab_netns.call_in(netns, socket.if_nametoindex, name) if netns else socket.if_nametoindex(name)
    except OSError:
        raise CommandError(f"--ingress {name!r}: no such interface"
                           + (f" in network namespace {netns}" if netns else "")) from None


@command(missing="empty")
def run_trace(args: argparse.Namespace, session: Session) -> int:
    from controlplane.dataplane import trace as dptrace
    from controlplane.dataplane.commands import open_maps
    src, sport, _ = parse_endpoint(args.source, "SRC", port_required=False, protocol_allowed=False)
    dst, dport, proto = parse_endpoint(args.destination, "DST", port_required=True)
    if args.entry == "socket" and args.run:
        raise CommandError("--run: the socket hooks run at connect()/sendmsg(), not on a packet; "
                           "BPF_PROG_TEST_RUN cannot run them (--entry socket traces them from the maps)")
    if args.entry == "socket" and args.tcp_flags is not None:
        raise CommandError("--tcp-flags: a socket's connect()/sendmsg() carries no TCP flags (--entry socket)")
    default_sport = 0 if args.entry == "socket" else DEFAULT_SPORT   # an unbound socket's: 0
    packet = dptrace.Packet(src, default_sport if sport is None else sport, dst, dport, proto or "TCP",
                            parse_flags(args.tcp_flags))
    owners = Owners(load_service_views(session.store, None))
    entry, from_source = args.entry, ""
    if entry is None:
        entry, from_source = source_entry(whereabouts(session.store, args.state_dir), args.node, src)
    maps = open_maps(args)
    try:
        t = dptrace.trace(maps, packet, entry, node_timeouts(args))
        why = entry_reason(args, from_source, t.entry)
        result = None
        if args.run:
            netns, ifindex = _ingress(args, t.entry)
            try:
                if netns:
                    from controlplane.lab import netns as lab_netns
                    result = lab_netns.call_in(netns, dptrace.run, maps, t, ifindex)
                else:
                    result = dptrace.run(maps, t, ifindex)
            except FileNotFoundError as exc:
                raise CommandError(f"--run: {exc} (the agent pins its programs)") from None
        if args.output == "json":
            print(json.dumps(as_json(t, owners, result, args.node, why), indent=2))
        else:
            print(human(t, owners, result, args.node, why))
        return 0
    finally:
        maps.close()


def _pod(owners: Owners, t, addr) -> str:
    owner = owners.of(t.frontend.frontend) if t.frontend else None
    pod = owner.pods.get(tuple(addr)) if owner and addr else None
    return f" ({pod})" if pod else ""


def _a(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if addr else "?"


def human(t, owners: Owners, result, node: str, why: str = "") -> str:
    p = t.packet
    lines = []
    flags = f" [{flag_names(t.tcp_flags)}]" if p.protocol == "TCP" else ""
    if t.entry == "socket":
        lines.append(("Socket", f"{p.protocol} {p.src}:{p.sport} -> {p.dst}:{p.dport}, a socket of {node} "
                                f"connecting or sending (the socket hooks)"))
    else:
        where = "the node's external interface (svcxdp_external)" if t.entry == "external" else \
            "a pod interface (svcxdp_main)"
        lines.append(("Packet", f"{p.protocol} {p.src}:{p.sport} -> {p.dst}:{p.dport}{flags}, on {node}, "
                                f"arriving on {where}"))
    if why:
        lines.append(("Entry", why))
    if t.frontend is None:
        lines.append(("Frontend", "none"))
        if t.reply_of:
            lines.append(("Reply of", _a(t.reply_of)))
    else:
        fe = t.frontend
        owner = owners.of(fe.frontend)
        whose = f"{owner.kind} of {owner.label}" if owner else \
            ("ClusterIP" if fe.frontend.scope == "cluster" else "external") + " (no Service in the store names it)"
        lines.append(("Frontend", f"{fe.frontend} {whose}, service id {fe.svc_id}"))
        alg = fe.algorithm + (f" (Maglev table of {fe.table_size})" if fe.algorithm == "maglev" else "")
        extra = [f"{fe.count} slot{'s' if fe.count != 1 else ''}"]
        if fe.terminating_only:
            extra.append("terminating backends only")
        if fe.affinity_timeout:
            extra.append(f"ClientIP affinity {fe.affinity_timeout}s")
        if fe.source_ranges:
            extra.append("loadBalancerSourceRanges")
        if fe.local_drop:
            extra.append("Local policy, no local endpoint")
        lines.append(("Algorithm", f"{alg}, {', '.join(extra)}"))
        ct = t.conntrack
        if t.entry == "socket":
            pass   # the hooks keep no conntrack entry
        elif ct is None:
            lines.append(("Conntrack", "no entry (a new flow)"))
        else:
            table = "confirmed (conntrack)" if ct.table == "conntrack" else f"unconfirmed ({ct.table})"
            snat = f", source NAT {_a(ct.snat)}" if ct.snat else ""
            left = f"expires in {ct.remaining_s:.1f}s" if ct.remaining_s >= 0 else f"expired {-ct.remaining_s:.1f}s ago"
            lines.append(("Conntrack", f"{table}: backend {_a(ct.backend)}{_pod(owners, t, ct.backend)}{snat}, "
                                       f"{ct.state}, idle {ct.idle_s:.1f}s, {left} -> {ct.verdict}"))
        if fe.affinity_timeout:
            a = t.affinity
            if a is None:
                lines.append(("Affinity", f"no entry for {p.src}"))
            else:
                left = f"{a.remaining_s:.1f}s left" if a.remaining_s >= 0 else f"expired {-a.remaining_s:.1f}s ago"
                lines.append(("Affinity", f"{p.src} -> {_a(a.backend)}{_pod(owners, t, a.backend)}, "
                                          f"idle {a.idle_s:.1f}s, {left} -> {a.verdict}"))
    c = t.choice
    if c is not None:
        if c.exact:
            lines.append(("Backend", f"{_a(c.backend)}{_pod(owners, t, c.backend)} (id {c.backend_id}), "
                                     f"by {c.by}: {c.detail}"))
        else:
            lines.append(("Backend", f"one of {', '.join(_a(b) for b in c.candidates) or 'none'}, "
                                     f"by {c.by}: {c.detail}"))
    if t.rewrite is not None:
        r = t.rewrite
        lines.append(("Connects to" if t.entry == "socket" else "Rewrite",
                      f"{p.src}:{p.sport} -> {p.dst}:{p.dport}  becomes  {_a(r.src)} -> "
                      f"{_a(r.dst) if r.dst else 'the chosen backend'}"))
        if r.snat:
            lines.append(("", f"source NAT: {r.snat}"))
    lines.append(("Verdict", f"{t.verdict} ({t.reason})" if t.reason else t.verdict))
    for note in t.notes:
        lines.append(("Why", note))
    if result is not None:
        lines.append(("Run", run_line(t, result)))
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k:<{width}}{v}".rstrip() for k, v in lines)


def agrees(t, result) -> bool:
    """Does the test-run's outcome match the trace?"""
    verdict_ok = result.verdict in t.verdict.split("|")
    if t.rewrite is None or t.verdict == "XDP_DROP":
        return verdict_ok
    if t.rewrite.dst is None:
        return verdict_ok and t.choice is not None and result.dst in t.choice.candidates
    src_ok = result.src == tuple(t.rewrite.src) or bool(t.rewrite.snat)
    return verdict_ok and result.dst == tuple(t.rewrite.dst) and src_ok


def run_line(t, result) -> str:
    what = f"{_a(result.src)} -> {_a(result.dst)}" if result.src else "a non-IPv4 frame"
    if result.icmp_type is not None:
        what += f" ICMP type {result.icmp_type}"
    elif result.tcp_flags is not None and t.reason == "reject":
        what += f" [{flag_names(result.tcp_flags)}]"
    return (f"{result.verdict} {what} (BPF_PROG_TEST_RUN, {result.duration_ns} ns): "
            f"{'as predicted' if agrees(t, result) else 'DIFFERS from the prediction'}")


def as_json(t, owners: Owners, result, node: str, why: str = "") -> dict:
    doc = {"node": node, **dataclasses.asdict(t), "entry_reason": why}
    if t.frontend is not None:
        owner = owners.of(t.frontend.frontend)
        doc["frontend"]["frontend"] = str(t.frontend.frontend)
        doc["frontend"]["scope"] = t.frontend.frontend.scope
        doc["frontend"]["owner"] = None if owner is None else {
            "namespace": owner.namespace, "service": owner.service, "port": owner.port, "kind": owner.kind}
    if result is not None:
        doc["run"] = {**dataclasses.asdict(result), "agrees": agrees(t, result)}
    return doc
