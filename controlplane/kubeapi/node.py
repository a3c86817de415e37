"""The agent's own Node, read from the Kubernetes API: its zone label, which kube-proxy
reads to follow the endpoints' topology hints (agent/topology.py)."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

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


def follow_node_zone(api: client.ApiClient, name: str, on_zone: Callable[[str], None], stop: threading.Event,
                     again_s: float = 10.0, max_s: float = 600.0,
                     log: logging.Logger | None = None) -> threading.Thread:
    """Read Node `name` now and again until it has a zone, then call on_zone(zone) once
    and end (a thread; `stop` ends it sooner).

    With an external cloud provider the kubelet registers its Node without the label and
    the cloud controller adds it after, which can be after the agent started. The label
    is not meant to change once set, so a Node that has one is not read again (an agent
    restarted after a relabel reads the new one). The reads come again_s apart, then
    twice as far each time up to max_s: a node of a cluster without zones costs its API
    server a read every ten minutes. A read that fails (no such Node yet, no answer,
    anything the client raises) is tried again at the next turn; the first is logged as
    a warning, the rest at debug level."""
    log = log or logging.getLogger(__name__)

    def follow() -> None:
        wait, said = again_s, False
        while True:
            try:
                zone = node_zone(api, name)
            except Exception as exc:   # (NodeReadError, or a client fault: never the end of the thread)
                why = str(exc) if isinstance(exc, NodeReadError) else f"node {name}: {exc!r}"
                (log.debug if said else log.warning)(
                    "%s; zone topology hints are ignored until it can be read (read again in %.0f s)", why, wait)
                said = True
            else:
                if zone:
                    on_zone(zone)
                    return
                if not said:
                    log.info("node %s has no %s label yet: zone topology hints are ignored until it has one "
                             "(read again in %.0f s, then less often)", name, ZONE_LABEL, wait)
                    said = True
            if stop.wait(wait):
                return
            wait = min(wait * 2, max_s)
    thread = threading.Thread(target=follow, name="node-zone", daemon=True)
    thread.start()
    return thread
