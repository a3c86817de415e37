"""svcctl lab up|down|status|add-pod|remove-pod and svcctl exec."""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import subprocess
import sys
from dataclasses import asdict

from controlplane import cgroups
from controlplane.lab import hooks, netns
from controlplane.lab.state import PortSpec
from controlplane.lab.topology import Lab, LabError, LabStatus, describe_others


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir", default=None,
        help="state folder (default $SVCXDP_STATE_DIR or /var/lib/svcxdp); the lab uses <dir>/lab",
    )

    lab = sub.add_parser("lab", help="the embedded runtime: nodes and pods as network namespaces")
    lsub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lab.set_defaults(func=lambda a: (lab.print_help(), 2)[1])

    p = lsub.add_parser("up", parents=[common], help="create the lab (idempotent)")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1; never shrinks)")
    p.add_argument("--no-node-processes", action="store_true", help="do not start per-node processes (agents)")
    p.add_argument("--no-dns", action="store_true",
                   help="do not install the cluster DNS (kube-dns at 10.96.0.10, dnsmasq on the outside host)")
    p.add_argument("--store", choices=["sqlite", "etcd"], default=None,
                   help="the cluster store: sqlite (a file in the state dir; the default) or etcd (members in "
                        "their own lab namespaces; svcctl given this state dir then uses it)")
    p.add_argument("--etcd-members", type=int, default=3, metavar="N",
                   help="with --store etcd: the number of etcd members (default 3; fixed once made)")
    p.add_argument("--socket-lb-pods", action="store_true",
                   help="pods' processes go under the socket hooks too (their agent is given the pods' "
                        "cgroup as a second --socket-lb-cgroup); default: pods take the XDP path. "
                        "Same as SVCXDP_SOCKET_LB_PODS=1")
    p.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for every agent this `lab up` starts (repeat it), e.g. "
                        "--agent-arg=--lb-algorithm=maglev; checked with the agent's own parser first, and "
                        "the flags the lab gives its agents are refused. Agents already running keep theirs")
    p.add_argument("--no-wait", action="store_true",
                   help="return once the lab exists, without waiting for its pods and agents")
    p.set_defaults(func=cmd_up)

    p = lsub.add_parser("down", parents=[common], help="remove every namespace, process and file the lab made")
    p.add_argument("--force", action="store_true",
                   help="also remove the namespaces, processes and cgroups named like the lab's that this "
                        "state dir did not make (left by a lab whose state dir was lost); without it they "
                        "are left alone and named")
    p.set_defaults(func=cmd_down)

    p = lsub.add_parser("status", parents=[common], help="what is up")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_status)

    p = lsub.add_parser("kubelet", parents=[common],
                        help="run the lab's pod runtime in the foreground (lab up starts it)")
    p.add_argument("--store", default=None, metavar="URL", help="etcd://... (default: the state dir's store)")
    p.set_defaults(func=lambda a: __import__("controlplane.lab.kubelet", fromlist=["run_kubelet"])
                   .run_kubelet(a.state_dir, a.store))

    p = lsub.add_parser("add-pod", parents=[common], help="start a pod by hand (for debugging; the agent makes pods)")
    p.add_argument("name")
    p.add_argument("--image", default="busybox")
    p.add_argument("--node", default=None, help="default: the node with fewest pods")
    p.add_argument("--port", action="append", default=[], metavar="PORT[/PROTO]", help="container port, e.g. 80 or 53/UDP")
    p.set_defaults(func=cmd_add_pod)

    p = lsub.add_parser("remove-pod", parents=[common], help="remove a pod by hand")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove_pod)

    p = sub.add_parser("exec", parents=[common], help="run a command in a pod, a node (node1) or outside")
    p.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="interactive terminal (ours is inherited)")
    p.add_argument("host", help="pod name, node name (node1) or outside")
    # controlplane.cli.main splits argv at `--` and puts what follows in args.command, so
    # flags may come before `--` (`exec node1 --state-dir X -- CMD`), as with `run`.
    p.add_argument("command", nargs="*", help="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_exec)


def _guard(fn):
    """Lab failures become `error: ...` and exit 1; so does not being root."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (LabError, netns.NetnsError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES):
                raise
            print(f"error: {_not_permitted(args, exc)}", file=sys.stderr)
            return 1

    return wrapped


def _not_permitted(args: argparse.Namespace, exc: OSError) -> str:
    what = f"lab {args.lab_command}" if getattr(args, "lab_command", None) else args.subcommand
    detail = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
    if os.geteuid() != 0:
        return (f"svcctl {what} must run as root (the lab is network namespaces and cgroups, its state "
                f"under the state dir): {detail}")
    return f"svcctl {what}: {detail}"


# What the lab gives each agent itself (node_processes), by the agent parser's names:
# `lab up --agent-arg` may not set them again (abbreviated or not).
LAB_AGENT_SETTINGS = ("node", "attach_points", "store", "state_dir", "instance", "node_ip", "socket_lb_cgroup",
                      "source", "kubeconfig", "interfaces", "discover", "uninstall")


def agent_args_problem(extra: list[str]) -> str | None:
    """Why `lab up --agent-arg` cannot give these to the lab's agents: what the agent's own
    parser says of them, or a setting the lab gives them itself; None when they would do."""
    if not extra:
        return None
    from controlplane.agent.commands import register as register_agent
    parser = argparse.ArgumentParser(prog="svcctl")   # `svcctl agent`'s parser, as the CLI builds it
    register_agent(parser.add_subparsers(dest="subcommand"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            given = parser.parse_args(["agent", "--node", "node1", *extra])
        except SystemExit:
            return f"--agent-arg {' '.join(extra)}: {err.getvalue().strip().splitlines()[-1]}"
    plain = parser.parse_args(["agent", "--node", "node1"])
    for name in LAB_AGENT_SETTINGS:
        if getattr(given, name) != getattr(plain, name):
            return f"--agent-arg {' '.join(extra)}: the lab gives its agents --{name.replace('_', '-')} itself"
    return None


def node_process_provider(args: argparse.Namespace) -> hooks.NodeProcessProvider | None:
    """What `lab up` starts on each node: the registered node processes, the agents with
    `--agent-arg`s appended; None with --no-node-processes."""
    if args.no_node_processes:
        return None
    return hooks.with_args("agent", *args.agent_arg) if args.agent_arg else hooks.node_processes


@_guard
def cmd_up(args: argparse.Namespace) -> int:
    if args.socket_lb_pods:
        os.environ["SVCXDP_SOCKET_LB_PODS"] = "1"   # read where the agents' command lines are made
    problem = agent_args_problem(args.agent_arg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from controlplane.progress import Progress
    progress = Progress()
    provider = node_process_provider(args)
    lab = Lab(args.state_dir)
    lab.up(nodes=args.nodes, node_processes=provider, store=args.store, etcd_members=args.etcd_members,
           progress=progress.update)
    if not args.no_dns:
        from controlplane.store.paths import open_store

        from .addons import install_dns
        progress.update("lab up: installing the cluster DNS (kube-dns)")
        install_dns(lab, open_store(args.state_dir))
    if not args.no_wait and not args.no_node_processes:
        _wait_ready(lab, args, progress)
    progress.close()
    status = lab.status()
    _print_status(status)
    if not status.up or status.degraded:
        print(f"error: the lab came up degraded ({', '.join(status.missing + status.dead) or 'incomplete'}); "
              f"see the logs in {lab.store.logs}", file=sys.stderr)
        return 1
    return 0


def _wait_ready(lab: Lab, args: argparse.Namespace, progress, timeout_s: float = 180.0) -> None:
    """Until every pod in the store runs and is ready and every agent did its first sync,
    showing how many are (the lab works before that, but answers from pods not yet up fail)."""
    import time
    from pathlib import Path

    from controlplane.api.pod import Pod
    from controlplane.progress import duration
    from controlplane.store.paths import open_store

    store = open_store(args.state_dir)
    start = time.monotonic()
    while True:
        pods = store.list(Pod)
        ready = sum(1 for p in pods if p.phase == "Running" and p.ready)
        agents = [Path(p.log) for p in lab.status().processes if p.name == "agent"]
        synced = sum(1 for log in agents if log.exists() and "sync (start)" in log.read_text(errors="replace"))
        elapsed = time.monotonic() - start
        progress.update(f"lab up: pods {ready}/{len(pods)} ready, agents {synced}/{len(agents)} synced "
                        f"({duration(elapsed)})")
        if ready == len(pods) and synced == len(agents):
            progress.line(f"lab up: ready in {duration(elapsed)} ({len(pods)} pods, {len(agents)} agents)")
            return
        dead = [d for d in lab.status().dead if not d.startswith("pod/")]   # nobody restarts those
        if dead:
            progress.line(f"lab up: not running: {', '.join(dead)} (after {duration(elapsed)})")
            return
        if elapsed > timeout_s:
            progress.line(f"lab up: still waiting after {duration(elapsed)} (pods {ready}/{len(pods)} ready, "
                          f"agents {synced}/{len(agents)} synced); see `svcctl lab status` and the logs")
            return
        time.sleep(0.5)


@_guard
def cmd_down(args: argparse.Namespace) -> int:
    lab = Lab(args.state_dir)
    had_lab = lab.store.exists()
    removed = lab.down(on_down=hooks.on_lab_down, force=args.force)
    if had_lab or removed:
        print(f"lab down: removed {len(removed)} namespaces" + (f" ({', '.join(removed)})" if removed else ""))
    else:
        print(f"lab down: no lab in state dir {lab.store.state_dir} (no {lab.store.file})")
    others = lab.others()
    if others:   # another state dir's lab, or one whose state is lost: named, not removed
        print(f"lab down: left alone: {describe_others(others, lab.prefix, str(lab.store.state_dir))}",
              file=sys.stderr)
        return 1
    return 0


@_guard
def cmd_status(args: argparse.Namespace) -> int:
    status = Lab(args.state_dir).status()
    if args.output == "json":
        print(json.dumps(asdict(status), indent=2))
    else:
        _print_status(status)
    return 0 if status.up and not status.degraded else 1   # scripts can tell a lab that needs `lab up`


def _parse_port(text: str) -> PortSpec:
    port, _, proto = text.partition("/")
    return PortSpec(int(port), (proto or "TCP").upper())


@_guard
def cmd_add_pod(args: argparse.Namespace) -> int:
    pod = Lab(args.state_dir).add_pod(args.name, args.node, args.image, [_parse_port(p) for p in args.port])
    print(f"pod/{pod.name} running on {pod.node}: {pod.ip} ({pod.server}, netns {pod.netns})")
    return 0


@_guard
def cmd_remove_pod(args: argparse.Namespace) -> int:
    if not Lab(args.state_dir).remove_pod(args.name):
        raise LabError(f"no pod {args.name!r} in the lab")
    print(f"pod/{args.name} removed")
    return 0


@_guard
def cmd_exec(args: argparse.Namespace) -> int:
    if not args.command:
        raise LabError("usage: svcctl exec HOST -- CMD [ARGS...]")
    lab = Lab(args.state_dir)
    ns = lab.netns_for(args.host)
    # Output goes straight to our stdout/stderr; stdin only with -i, as kubectl exec.
    # The command joins the host's cgroup: on a node, the socket hooks serve it.
    proc = subprocess.run(cgroups.command(lab.cgroup_for(args.host), netns.command(ns, args.command)),
                          stdin=None if args.stdin else subprocess.DEVNULL)
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def _print_status(s: LabStatus) -> None:
    if s.outside is None:
        print(f"lab: down (state {s.state_dir})")
        return
    print(f"lab: {'degraded' if s.degraded else 'up'} (prefix {s.prefix}, state {s.state_dir}/lab)")
    print(f"outside  {s.outside.netns}  {s.outside.ip}/24 on {s.outside.bridge}")
    if s.store == "etcd":
        print(f"store    etcd, {len(s.etcd)} members: {s.store_url}")
        for m in s.etcd:
            print(f"  {m.name}  {m.netns}  {m.ip}  data {m.dir}")
    rows = [("NODE", "NETNS", "IP", "POD CIDR", "EXTERNAL", "PODS")]
    for n in s.nodes:
        count = sum(1 for p in s.pods if p.node == n.name)
        rows.append((n.name, n.netns, n.ip, n.pod_cidr, f"{n.ext_ifname}#{n.ext_ifindex}", str(count)))
    _table(rows)
    if s.pods:
        rows = [("POD", "NODE", "IP", "IMAGE", "SERVER", "PID", "NODE VETH")]
        for p in sorted(s.pods, key=lambda p: p.name):
            rows.append((p.name, p.node, p.ip, p.image, p.server, str(p.pid or "-"), f"{p.host_ifname}#{p.host_ifindex}"))
        _table(rows)
    for proc in s.processes:
        print(f"process {proc.node}/{proc.name} pid {proc.pid}: {' '.join(proc.argv)}")
    for ns in s.missing:
        print(f"missing namespace: {ns}")
    for d in s.dead:
        print(f"not running: {d}")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
