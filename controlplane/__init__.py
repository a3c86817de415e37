"""svcxdp control plane: Kubernetes Services programmed into an XDP dataplane."""

__version__ = "0.1.0"
