"""An ApiClient of the official `kubernetes` client: from a kubeconfig file, or (no file)
from the pod's service account, as kube-proxy does."""
from __future__ import annotations

import os

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

ENV_KUBECONFIG = "KUBECONFIG"


class KubeConfigError(Exception):
    """No usable kubeconfig or in-cluster configuration."""


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """`kubeconfig` (else $KUBECONFIG) if given, else the in-cluster configuration
    (KUBERNETES_SERVICE_HOST and the service account's token and CA)."""
    path = kubeconfig or os.environ.get(ENV_KUBECONFIG) or None
    cfg = client.Configuration()
    try:
        if path:
            if not os.path.isfile(path):
                raise KubeConfigError(f"--kubeconfig {path}: no such file")
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except ConfigException as exc:
        where = f"kubeconfig {path}" if path else "in-cluster config (no --kubeconfig given)"
        raise KubeConfigError(f"{where}: {exc}") from None
    return client.ApiClient(cfg)
