"""svcctl run NAME --image IMAGE [--replicas N] [--port P] [--labels] [--expose]: a Deployment.

`run NAME --rm -it [--image busybox] -- CMD` is a temporary client pod; that needs the lab's
runtime (controlplane.lab.client.run_client_pod) and is handed to it.
"""
from __future__ import annotations

import argparse
import importlib

from controlplane.api.deployment import Deployment, DeploymentSpec, LabelSelectorSpec, PodTemplateSpec
from controlplane.api.meta import ObjectMeta
from controlplane.api.pod import Container, ContainerPort, PodSpec
from controlplane.api.service import Service, ServicePort, ServiceSpec
from controlplane.errors import CommandError

from .options import common_parent
from .session import Session, command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", parents=[common_parent()],
                       help="create a Deployment (or, with --rm -it, a temporary client pod in the lab)")
    p.add_argument("name")
    p.add_argument("--image", default=None)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--port", type=int, default=None, help="container port")
    p.add_argument("--labels", "-l", default=None, help="k=v,... (default run=NAME)")
    p.add_argument("--env", action="append", default=[], help="K=V container environment (repeatable)")
    p.add_argument("--expose", action="store_true", help="also create a ClusterIP Service on --port")
    p.add_argument("--rm", action="store_true", help="delete the pod when the command exits (client pod)")
    p.add_argument("-i", "--stdin", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("--node", default=None, help="lab node for a client pod")
    p.epilog = "svcctl run NAME --rm -it [--image busybox] -- CMD [ARGS...] runs a temporary client pod"
    # controlplane.cli.main splits argv at `--` and puts what follows in args.command.
    p.add_argument("command", nargs="*", help="-- CMD ARGS (client pod)")
    p.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    if args.rm or args.stdin or args.tty or args.command:
        return _client_pod(args)
    return _run_deployment(args)


def _client_pod(args: argparse.Namespace) -> int:
    try:
        client = importlib.import_module("controlplane.lab.client")
    except ImportError:
        client = None
    run_client_pod = getattr(client, "run_client_pod", None)
    if run_client_pod is None:
        raise CommandError("run --rm -it needs the lab (svcctl lab up)")
    return int(run_client_pod(args) or 0)


def _labels(text: str | None, name: str) -> dict[str, str]:
    if not text:
        return {"run": name}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CommandError(f"invalid label spec: {part}")
        out[key] = value
    return out


def build_deployment(name: str, image: str, replicas: int, port: int | None, labels: dict[str, str],
                     env: list[str], namespace: str) -> Deployment:
    env_vars = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"invalid env: {item}")
        env_vars.append({"name": key, "value": value})
    container = Container(name=name, image=image, ports=[ContainerPort(container_port=port)] if port else None,
                          extra={"env": env_vars} if env_vars else {})
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
        spec=DeploymentSpec(replicas=replicas, selector=LabelSelectorSpec(match_labels=dict(labels)),
                            template=PodTemplateSpec(metadata=ObjectMeta(labels=dict(labels)),
                                                     spec=PodSpec(containers=[container]))),
    )


@command
def _run_deployment(args: argparse.Namespace, session: Session) -> int:
    if not args.image:
        raise CommandError('required flag(s) "image" not set')
    if args.replicas < 0:
        raise CommandError("--replicas must be greater than or equal to 0")
    if args.expose and not args.port:
        raise CommandError("--port must be set when exposing a service")
    labels = _labels(args.labels, args.name)
    dep = build_deployment(args.name, args.image, args.replicas, args.port, labels, args.env, session.namespace)
    created = [session.registry.create(dep)]
    if args.expose:
        svc = Service(metadata=ObjectMeta(name=args.name, namespace=session.namespace),
                      spec=ServiceSpec(selector=dict(labels), ports=[ServicePort(port=args.port, target_port=args.port)]))
        created.append(session.registry.create(svc))
    session.reconcile()
    for obj in created:
        ref = "deployment.apps" if isinstance(obj, Deployment) else "service"
        print(f"{ref}/{obj.name} created")
    return 0
