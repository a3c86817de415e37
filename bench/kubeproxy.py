"""The iptables ruleset kube-proxy (iptables mode) writes for N ClusterIP services, as
`iptables-restore` input — the peer the XDP dataplane is measured against.

Shape (pkg/proxy/iptables/proxier.go; reference/service-semantics.md §2):
  nat:    PREROUTING/OUTPUT -> KUBE-SERVICES, one rule per service port
          (`-d VIP/32 -p proto --dport P -j KUBE-SVC-*`), then the KUBE-NODEPORTS rule last;
          KUBE-SVC-*: `! -s clusterCIDR` -> KUBE-MARK-MASQ, then one rule per endpoint with
          `-m statistic --mode random --probability 1/(n-i)` (the last unconditional);
          KUBE-SEP-*: `-s EP/32 -j KUBE-MARK-MASQ` (hairpin), then DNAT;
          KUBE-POSTROUTING masquerades what carries mark 0x4000;
          a NodePort: `KUBE-NODEPORTS -p proto --dport NP -j KUBE-EXT-*`, KUBE-EXT-*: KUBE-MARK-MASQ
          (externalTrafficPolicy Cluster), then KUBE-SVC-*.
  filter: KUBE-FORWARD (ctstate INVALID drop, mark accept, established accept),
          FORWARD/OUTPUT/INPUT jumps to KUBE-SERVICES/KUBE-PROXY-FIREWALL etc. (empty here:
          every service has endpoints).
Chain names are "KUBE-SVC-" / "KUBE-SEP-" + base32(sha256(...))[:16], as kube-proxy's.
Above 1,000 endpoints kube-proxy drops the per-rule comments; so does this generator.

It only ever produces text; the bench loads it with `ip netns exec svcxdp-bench-... iptables-restore`.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Svc:
    namespace: str
    name: str
    port_name: str
    vip: str
    port: int
    protocol: str            # "TCP" | "UDP"
    endpoints: tuple[tuple[str, int], ...]
    node_port: int | None = None


def _hash(s: str) -> str:
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:16]


def svc_chain(s: Svc) -> str:
    return "KUBE-SVC-" + _hash(f"{s.namespace}/{s.name}:{s.port_name}{s.protocol.lower()}")


def ext_chain(s: Svc) -> str:
    return "KUBE-EXT-" + _hash(f"{s.namespace}/{s.name}:{s.port_name}{s.protocol.lower()}")


def sep_chain(s: Svc, ip: str, port: int) -> str:
    return "KUBE-SEP-" + _hash(f"{s.namespace}/{s.name}:{s.port_name}{s.protocol.lower()}{ip}:{port}")


def _svc_rules(s: Svc, cluster_cidr: str, comments: bool) -> tuple[list[str], list[str]]:
    """(chain declarations, rules) of one service port's KUBE-SVC and KUBE-SEP chains."""
    p = s.protocol.lower()
    svc = svc_chain(s)
    label = f"{s.namespace}/{s.name}:{s.port_name}"
    chains = [f":{svc} - [0:0]"]
    rules = [f'-A {svc} ! -s {cluster_cidr} -d {s.vip}/32 -p {p} -m comment --comment "{label} cluster IP" '
             f"-m {p} --dport {s.port} -j KUBE-MARK-MASQ"]
    n = len(s.endpoints)
    for i, (ip, port) in enumerate(s.endpoints):
        sep = sep_chain(s, ip, port)
        chains.append(f":{sep} - [0:0]")
        comment = f'-m comment --comment "{label} -> {ip}:{port}" ' if comments else ""
        prob = f"-m statistic --mode random --probability {1.0 / (n - i):0.10f} " if i < n - 1 else ""
        rules.append(f"-A {svc} {comment}{prob}-j {sep}")
    if s.node_port:
        ext = ext_chain(s)
        chains.append(f":{ext} - [0:0]")
        c = f'-m comment --comment "{label}" ' if comments else ""
        rules.append(f"-A KUBE-NODEPORTS {c}-m {p} -p {p} --dport {s.node_port} -j {ext}")
        rules.append(f'-A {ext} -m comment --comment "masquerade traffic for {label} external '
                     f'destinations" -j KUBE-MARK-MASQ')
        rules.append(f"-A {ext} -j {svc}")
    for ip, port in s.endpoints:
        sep = sep_chain(s, ip, port)
        c = f'-m comment --comment "{label}" ' if comments else ""
        rules.append(f"-A {sep} {c}-s {ip}/32 -j KUBE-MARK-MASQ")
        rules.append(f"-A {sep} {c}-m {p} -p {p} -j DNAT --to-destination {ip}:{port}")
    return chains, rules


def _services_rule(s: Svc, comments: bool) -> str:
    p = s.protocol.lower()
    c = f'-m comment --comment "{s.namespace}/{s.name}:{s.port_name} cluster IP" ' if comments else ""
    return f"-A KUBE-SERVICES {c}-d {s.vip}/32 -p {p} -m {p} --dport {s.port} -j {svc_chain(s)}"


FILTER = """*filter
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m comment --comment "kubernetes forwarding rules" -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""
# Jumps from the built-in chains, which kube-proxy ensures with `iptables -I` outside the
# restore; applied with --noflush after the full ruleset (which declares the chains).
JUMPS = """*filter
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
*nat
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
COMMIT
"""

NAT_HEAD = [":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]",
            ":KUBE-MARK-MASQ - [0:0]"]
NAT_FIXED = [
    "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
    "-j MASQUERADE --random-fully",
    "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
]
NODEPORTS_LAST = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
                  'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')


def full_ruleset(services: list[Svc], cluster_cidr: str) -> str:
    """A full sync: every chain declared and written (kube-proxy runs it with --noflush)."""
    comments = sum(len(s.endpoints) for s in services) <= 1000
    chains, rules = list(NAT_HEAD), list(NAT_FIXED)
    for s in services:
        c, r = _svc_rules(s, cluster_cidr, comments)
        chains += c
        rules += r
    rules += [_services_rule(s, comments) for s in services]
    rules.append(NODEPORTS_LAST)
    return FILTER + "*nat\n" + "\n".join(chains) + "\n" + "\n".join(rules) + "\nCOMMIT\n"


def partial_ruleset(services: list[Svc], changed: Svc, old: Svc, cluster_cidr: str) -> str:
    """A partial sync after one service's endpoints changed (KEP-3453): the top-level chains
    (KUBE-SERVICES and the fixed ones) are rewritten in full, the changed service's SVC and
    SEP chains are rewritten, SEP chains of endpoints that left are flushed and deleted;
    every other service's chains are left alone."""
    comments = sum(len(s.endpoints) for s in services) <= 1000
    chains, rules = list(NAT_HEAD), list(NAT_FIXED)
    c, r = _svc_rules(changed, cluster_cidr, comments)
    chains += c
    rules += r
    gone = [sep_chain(old, ip, port) for ip, port in old.endpoints if (ip, port) not in changed.endpoints]
    chains += [f":{g} - [0:0]" for g in gone]
    rules += [_services_rule(s, comments) for s in services]
    rules.append(NODEPORTS_LAST)
    rules += [f"-X {g}" for g in gone]
    return FILTER + "*nat\n" + "\n".join(chains) + "\n" + "\n".join(rules) + "\nCOMMIT\n"


def vip(i: int) -> str:
    """ClusterIP of service i: 10.96.0.1, 10.96.0.2, ... (contiguous, so a traffic
    generator can walk them with one counter)."""
    n = (10 << 24 | 96 << 16) + 1 + i
    return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def backend_ip(i: int, j: int) -> str:
    """Endpoint j of service i: inside 10.244.0.0/14 (10.244-10.247), unique per (i, j)."""
    n = (10 << 24 | 244 << 16) + i * 16 + j + 1
    return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


NODE_PORT_MIN, NODE_PORT_MAX = 30000, 32767


def services(n: int, endpoints: int, protocol: str, port: int, target_port: int,
             node_ports: bool = False) -> list[Svc]:
    """With `node_ports`, the first 2,768 services (the whole default range) are of type
    NodePort, service i on port 30000 + i; the others stay ClusterIP."""
    assert n * 16 < (1 << 18) and endpoints < 16
    span = NODE_PORT_MAX - NODE_PORT_MIN + 1
    return [Svc("bench", f"svc-{i}", "p", vip(i), port, protocol,
                tuple((backend_ip(i, j), target_port) for j in range(endpoints)),
                NODE_PORT_MIN + i if node_ports and i < span else None)
            for i in range(n)]
