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
            _check_yaml(path)
            try:
                config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
            except (TypeError, AttributeError, KeyError, ValueError) as exc:   # a field of the wrong shape
                raise KubeConfigError(f"kubeconfig {path}: not a valid kubeconfig ({type(exc).__name__}: {exc})") from None
        else:
            config.load_incluster_config(client_configuration=cfg)
    except ConfigException as exc:
        where = f"kubeconfig {path}" if path else "in-cluster config (no --kubeconfig given)"
        raise KubeConfigError(f"{where}: {exc}") from None
    return client.ApiClient(cfg)


def _check_yaml(path: str) -> None:
    """A kubeconfig that is not YAML, or not a mapping, fails naming the file and the
    place, not with the YAML parser's traceback."""
    import yaml
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KubeConfigError(f"kubeconfig {path}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KubeConfigError(f"kubeconfig {path}: cannot read it: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise KubeConfigError(f"kubeconfig {path}: not a kubeconfig (a YAML {type(data).__name__}, "
                              "not a mapping with clusters, contexts and users)")
