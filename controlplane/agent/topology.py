"""Topology-aware routing, as kube-proxy reads it (pkg/proxy/topology.go): which of a
service port's endpoints this node's Cluster-policy traffic may use, given the hints the
EndpointSlice controller wrote (`trafficDistribution: PreferClose`, `PreferSameZone`,
`PreferSameNode`; the `service.kubernetes.io/topology-mode: Auto` annotation).

Decided over the *ready* endpoints, per service port and per node:
- every ready endpoint is hinted for some node, and one for this node: only the endpoints
  hinted for this node (PreferSameNode);
- else every ready endpoint is hinted for some zone, and one for this node's zone: only the
  endpoints hinted for this zone;
- else every endpoint: a ready endpoint without hints, or none hinted for this node or
  zone, means the hints are ignored, never that the node is left without endpoints. (With
  no ready endpoint there is nothing to prefer either: the serving-and-terminating
  fallback takes them all, as kube-proxy's does.)

Local traffic policies are not subject to hints: they use this node's own endpoints
whatever the hints say (kube-proxy's localEndpoints). Names are compared as kube-proxy
compares them: a hint entry without a name names "" (Go's zero value), which a node
without a zone label has.
"""
from __future__ import annotations

from typing import Sequence

from controlplane.controllers.service_view import Hints


def available(ready: Sequence[bool], hints: Sequence[Hints | None], node: str, zone: str) -> list[bool] | None:
    """Per endpoint (the two columns in endpoint order), whether the hints leave it to this
    node's Cluster-policy traffic (a not-ready one too: the caller decides what that
    means); None when the hints do not apply and every endpoint may be used."""
    every_node = every_zone = True   # every ready endpoint hinted for some node / zone
    for_node = for_zone = False      # some ready endpoint hinted for this node / zone
    seen_ready = False
    for r, h in zip(ready, hints):
        if not r:
            continue
        if h is None:
            return None
        seen_ready = True
        if h.nodes:
            for_node = for_node or node in h.nodes
        else:
            every_node = False
        if h.zones:
            for_zone = for_zone or zone in h.zones
        else:
            every_zone = False
    if not seen_ready:
        return None
    if every_node and for_node:
        return [h is not None and node in h.nodes for h in hints]
    if every_zone and for_zone:
        return [h is not None and zone in h.zones for h in hints]
    return None
