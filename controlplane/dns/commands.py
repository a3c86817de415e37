"""svcctl dns: run the cluster DNS server in the foreground."""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys

from controlplane.controllers.config import ClusterConfig, load_config
from controlplane.store.paths import add_store_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dns", help="run the cluster DNS server (services, pods, forwarding)")
    p.add_argument("--state-dir", help="store directory (env SVCXDP_STATE_DIR, default /var/lib/svcxdp)")
    add_store_flags(p)
    p.add_argument("--domain", default="cluster.local", help="the cluster domain (default cluster.local)")
    p.add_argument("--service-cidr", default=None,
                   help="reverse zone(s) for ClusterIPs (default: the cluster's, from the store)")
    p.add_argument("--pod-cidr", default="10.244.0.0/16", help="reverse zone(s) for pod addresses (default 10.244.0.0/16)")
    p.add_argument("--ttl", type=int, default=5, help="TTL of every record, seconds (default 5, as CoreDNS)")
    p.add_argument("--listen", default="0.0.0.0", help="address to serve on (default all)")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--metrics-port", type=int, default=9153, help="/metrics, /health, /ready (0: off)")
    p.add_argument("--upstream", action="append", default=None, metavar="IP[:PORT]",
                   help="resolver for names outside the cluster (repeatable; default: --resolv-conf)")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", help="where default upstreams come from")
    p.add_argument("--no-forward", action="store_true", help="answer REFUSED for names outside our zones")
    p.add_argument("--forward-timeout", type=float, default=2.0, help="seconds before SERVFAIL (default 2)")
    p.add_argument("--pods", choices=["verified", "insecure", "disabled"], default="verified",
                   help="a-b-c-d.<ns>.pod records: for existing pods only, for any address, or none")
    p.add_argument("--lameduck", type=float, default=3.0,
                   help="seconds to keep answering after SIGTERM while the endpoint goes (default 3)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace, service_cidr: str):
    from .app import DnsConfig
    from .forward import parse_upstream, resolv_conf_upstreams

    cidrs = []
    for flag, value in (("--service-cidr", args.service_cidr or service_cidr), ("--pod-cidr", args.pod_cidr)):
        for item in filter(None, (v.strip() for v in value.split(","))):
            try:
                cidrs.append(str(ipaddress.IPv4Network(item, strict=False)))
            except ValueError:
                raise SystemExit(f"error: {flag}: {item!r} is not an IPv4 CIDR")
    if not 0 <= args.ttl <= 2**31 - 1:
        raise SystemExit(f"error: --ttl: {args.ttl} is out of range")
    try:
        upstreams = [parse_upstream(u) for u in args.upstream] if args.upstream is not None \
            else resolv_conf_upstreams(args.resolv_conf)
    except ValueError as exc:
        raise SystemExit(f"error: --upstream: {exc}")
    return DnsConfig(domain=args.domain.strip(".").lower(), reverse_cidrs=cidrs, ttl=args.ttl,
                     listen=args.listen, port=args.port, metrics_port=args.metrics_port,
                     upstreams=upstreams, forward=not args.no_forward,
                     forward_timeout=args.forward_timeout, pods=args.pods, lameduck=max(0.0, args.lameduck))


def run(args: argparse.Namespace) -> int:
    from controlplane.store.paths import open_store_from_args

    from .app import run_forever

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s dns %(levelname)s %(message)s")
    store = open_store_from_args(args)
    cluster = load_config(store) or ClusterConfig.from_env()
    config = _config(args, cluster.service_cidr)
    asyncio.run(run_forever(store, config))
    return 0
