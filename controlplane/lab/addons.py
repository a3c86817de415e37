"""Cluster add-ons the lab installs: the DNS (kube-dns Service + DNS pods) and, on the
outside host, what the DNS forwards to and what an ExternalName points at.

    install_dns(lab, store)   # after lab.up(); idempotent

The outside host gets dnsmasq (Debian's dnsmasq-base, config in the lab's data folder)
answering for the test zone `example.com` — `www.example.com` is the outside host itself —
and an HTTP server on port 80, so an ExternalName Service to www.example.com resolves end
to end and `curl http://ext-svc/` from a pod reaches the outside host (which is given
routes back to the pod CIDRs; the lab does no egress masquerading). dnsmasq has no
upstream of its own: nothing in the lab asks a resolver outside it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from controlplane.api.manifest import load_documents
from controlplane.controllers.manager import reconcile
from controlplane.controllers.registry import Manifest, Registry
from controlplane.store.interface import Store

from . import plan
from .topology import Lab

KUBE_DNS_MANIFEST = Path(__file__).parent / "manifests" / "kube-dns.yaml"
TEST_ZONE = "example.com"
DNSMASQ = "/usr/sbin/dnsmasq"


def dnsmasq_conf(ip: str) -> str:
    return "\n".join([
        f"listen-address={ip}", "bind-interfaces", "port=53",
        "no-resolv", "no-hosts", "no-poll", "user=root", "pid-file=",
        "local-ttl=30",                            # (dnsmasq's default for its own names is 0)
        f"local=/{TEST_ZONE}/",                    # authoritative-style: unknown names NXDOMAIN
        f"host-record={TEST_ZONE},{ip}",
        f"host-record=www.{TEST_ZONE},{ip}",
        f"host-record=mirror.{TEST_ZONE},{ip}",
        "log-queries", "log-facility=-",
    ]) + "\n"


def start_outside_servers(lab: Lab) -> None:
    lab.route_pod_cidrs_from_outside()
    conf = lab.store.data / "outside-dnsmasq.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(dnsmasq_conf(plan.OUTSIDE_IP))
    lab.start_outside_process("dnsmasq", [DNSMASQ, "--keep-in-foreground", f"--conf-file={conf}"])
    lab.start_outside_process("http", [sys.executable, "-m", "controlplane.lab.podserver", "--pod", "outside",
                                       "--flavour", "generic", "--tcp", "80"])


def install_dns(lab: Lab, store: Store) -> None:
    start_outside_servers(lab)
    docs = load_documents(KUBE_DNS_MANIFEST.read_text(), str(KUBE_DNS_MANIFEST))
    Registry(store).apply([Manifest(d.data, d.source) for d in docs], "kube-system")
    reconcile(store)
