"""The Kubernetes API as the agent's source (kube-proxy replacement mode).

    connect.api_client(kubeconfig)   an ApiClient from a kubeconfig or the in-cluster config
    reflector.Reflector              list then watch one resource, as client-go's reflector
    feed.KubeFeed                    Services + EndpointSlices folded into the agent's Source
"""
