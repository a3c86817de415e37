"""The agent's own Node, read once from the Kubernetes API: its zone label, which
kube-proxy reads to follow the endpoints' topology hints (agent/topology.py)."""
from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

ZONE_LABEL = "topology.kubernetes.io/zone"


class NodeReadError(Exception):
    """The Node could not be read (no such node, no permission, no answer)."""


def node_zone(api: client.ApiClient, name: str, timeout_s: float = 10.0) -> str:
    """The zone label of Node `name` ("" when it has none)."""
    try:
        node = client.CoreV1Api(api).read_node(name, _request_timeout=timeout_s)
    except ApiException as exc:
        raise NodeReadError(f"node {name}: the API answered {exc.status} {exc.reason}") from None
    except (HTTPError, OSError) as exc:
        raise NodeReadError(f"node {name}: {exc}") from None
    return (node.metadata.labels or {}).get(ZONE_LABEL, "") if node.metadata else ""
