"""svcctl apply -f / create -f (all or nothing), create deployment / create namespace."""
from __future__ import annotations

import argparse

from controlplane.api.deployment import Deployment, DeploymentSpec, LabelSelectorSpec, PodTemplateSpec
from controlplane.api.meta import ObjectMeta
from controlplane.api.namespace import Namespace
from controlplane.api.pod import Container, ContainerPort, PodSpec
from controlplane.errors import CommandError
from controlplane.controllers.registry import MODE_APPLY, MODE_CREATE, Manifest

from .files import read_documents
from .options import add_files, common_parent
from .resources import for_object
from .session import Session, command


def register(sub: argparse._SubParsersAction) -> None:
    parent = common_parent()
    p = sub.add_parser("apply", parents=[parent], help="create or update objects from manifests (kubectl apply)")
    add_files(p)
    p.set_defaults(func=run_apply)

    c = sub.add_parser("create", parents=[parent], help="create objects from manifests, or a deployment/namespace")
    add_files(c)
    c.add_argument("what", nargs="?", help="deployment | namespace (when not using -f)")
    c.add_argument("name", nargs="?")
    c.add_argument("--image", action="append", default=[], help="container image (create deployment)")
    c.add_argument("--replicas", type=int, default=1)
    c.add_argument("--port", type=int, default=None, help="container port (create deployment)")
    c.set_defaults(func=run_create)


def _manifests(args: argparse.Namespace, session: Session) -> list[Manifest]:
    docs = read_documents(args.filename, args.recursive)
    if session.namespace_given:
        for doc in docs:
            meta = doc.data.get("metadata")
            ns = meta.get("namespace") if isinstance(meta, dict) else None
            if ns and ns != session.namespace:
                raise CommandError(
                    f'the namespace from the provided object "{ns}" does not match the namespace '
                    f'"{session.namespace}". You must pass \'--namespace={ns}\' to perform this operation.')
    return [Manifest(d.data, d.source) for d in docs]


def _apply(args: argparse.Namespace, session: Session, mode: str) -> int:
    outcomes = session.registry.apply(_manifests(args, session), session.namespace, mode)
    session.reconcile()
    for outcome in outcomes:
        print(f"{for_object(outcome.obj).ref(outcome.obj.name)} {outcome.action}")
    return 0


@command
def run_apply(args: argparse.Namespace, session: Session) -> int:
    return _apply(args, session, MODE_APPLY)


@command
def run_create(args: argparse.Namespace, session: Session) -> int:
    if args.filename:
        if args.what:
            raise CommandError("cannot combine -f with a resource type")
        return _apply(args, session, MODE_CREATE)
    if not args.what:
        raise CommandError("must specify one of -f and -k")
    if not args.name:
        raise CommandError("NAME is required")
    what = args.what.lower()
    if what in ("deployment", "deploy"):
        obj = _deployment(args.name, args.image, args.replicas, args.port, session.namespace)
    elif what in ("namespace", "ns"):
        obj = Namespace(metadata=ObjectMeta(name=args.name))
    else:
        raise CommandError(f'unknown resource to create: "{args.what}" (use -f, or deployment / namespace)')
    created = session.registry.create(obj)
    session.reconcile()
    print(f"{for_object(created).ref(created.name)} created")
    return 0


def _deployment(name: str, images: list[str], replicas: int, port: int | None, namespace: str) -> Deployment:
    """`kubectl create deployment`: label app=NAME, one container per image."""
    if not images:
        raise CommandError('required flag(s) "image" not set')
    labels = {"app": name}
    containers = []
    for image in images:
        cname = image.split("/")[-1].split(":")[0].split("@")[0] if len(images) > 1 else name
        containers.append(Container(name=cname, image=image,
                                    ports=[ContainerPort(container_port=port)] if port else None))
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
        spec=DeploymentSpec(replicas=replicas, selector=LabelSelectorSpec(match_labels=dict(labels)),
                            template=PodTemplateSpec(metadata=ObjectMeta(labels=dict(labels)),
                                                     spec=PodSpec(containers=containers))),
    )
