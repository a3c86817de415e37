"""With `--socket-lb-pods` (SVCXDP_SOCKET_LB_PODS=1 at `lab up`), the lab's pod
processes go through the socket hooks too: the pods cgroup holds them, and a pod
reaching itself through its Service (hairpin) works without any packet NAT."""
from __future__ import annotations

import os

import pytest

from controlplane import cgroups
from controlplane.dataplane.sockhooks import HOOKS, attached_ids
from controlplane.lab import plan

from .cluster import Cluster, cluster_for_module
from .test_socket_lb import check_hairpin

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster(_lab_session_guard):
    os.environ["SVCXDP_SOCKET_LB_PODS"] = "1"   # read by the agent's lab hook at `lab up`
    try:
        yield from cluster_for_module("sockpods", nodes=1)
    finally:
        os.environ.pop("SVCXDP_SOCKET_LB_PODS", None)


def test_pods_cgroup_holds_the_hooks(cluster: Cluster):
    ids = attached_ids(cgroups.path(plan.pods_cgroup(cluster.lab.prefix, 1)))
    assert all(len(ids[h.name]) == 1 for h in HOOKS), ids


def test_hairpin_through_the_socket_hooks(cluster: Cluster):
    check_hairpin(cluster)
