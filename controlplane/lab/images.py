"""What a container image becomes in the lab: which server runs, on which ports.

Servers listen where the real image listens (nginx and httpd on 80, redis on 6379), so a
Service's targetPort means the same thing here as on a real cluster.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from controlplane.lab.state import PortSpec

CLIENT_ONLY = ("busybox", "cirros")
# Images that run the cluster DNS server (`svcctl dns`): ours, and CoreDNS's so that a
# stock CoreDNS Deployment works in the lab too.
DNS_IMAGES = ("svcxdp/dns", "coredns/coredns")


@dataclass(frozen=True)
class ServerSpec:
    kind: str  # none | podserver (our Python HTTP/UDP server) | redis (the real redis-server) | dns (svcctl dns)
    flavour: str = "generic"  # http page set: nginx | httpd | myapp | generic
    version: str = ""  # myapp's vN
    tcp: tuple[int, ...] = ()
    udp: tuple[int, ...] = ()


def parse_image(image: str) -> tuple[str, str, str]:
    """'docker.io/ikubernetes/myapp:v1' -> ('ikubernetes/myapp', 'myapp', 'v1')."""
    ref = image.split("@", 1)[0]
    repo, tag = ref, ""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
    parts = repo.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # drop a registry host
    if parts[:1] == ["library"]:
        parts = parts[1:]
    path = "/".join(parts)
    return path, parts[-1] if parts else "", tag


def _declared(ports: list[PortSpec], protocol: str) -> tuple[int, ...]:
    return tuple(sorted({p.port for p in ports if p.protocol.upper() == protocol}))


def server_for(image: str, ports: list[PortSpec]) -> ServerSpec:
    path, base, tag = parse_image(image)
    if base.startswith(CLIENT_ONLY):
        return ServerSpec(kind="none")
    if path in DNS_IMAGES:
        return ServerSpec(kind="dns", tcp=(53, 9153), udp=(53,))
    if base.startswith("redis"):
        return ServerSpec(kind="redis", tcp=(6379,))
    if base.startswith("nginx"):
        return ServerSpec(kind="podserver", flavour="nginx", tcp=(80,))
    if base.startswith("httpd"):
        return ServerSpec(kind="podserver", flavour="httpd", tcp=(80,))
    if path == "ikubernetes/myapp":
        version = tag if re.fullmatch(r"v\d+", tag or "") else "v1"
        return ServerSpec(kind="podserver", flavour="myapp", version=version, tcp=(80,))
    tcp, udp = _declared(ports, "TCP"), _declared(ports, "UDP")
    if not tcp and not udp:
        return ServerSpec(kind="none")
    return ServerSpec(kind="podserver", flavour="generic", tcp=tcp, udp=udp)
