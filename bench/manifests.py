"""Manifests the lab benchmarks apply: a Deployment of one image and its ClusterIP Service."""
from __future__ import annotations


def deployment(name: str, replicas: int, image: str = "nginx") -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": name, "image": image,
                                                           "ports": [{"containerPort": 80}]}]}}}}


def service(name: str) -> dict:
    """Port 80 to the pods' port 80, selecting app=NAME."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]}}
