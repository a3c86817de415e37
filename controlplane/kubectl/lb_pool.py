"""svcctl lb-pool [show] | set (CIDR|START-STOP)... | set -f FILE: the LB-IPAM pool.

Setting the pool runs LB-IPAM over every service at once (in the same transaction): addresses
outside the new pool are released and their services re-assigned or left pending.
"""
from __future__ import annotations

import argparse

from controlplane.api.service import Service
from controlplane.errors import CommandError
from controlplane.controllers.lb_ipam import POOL_LB_IPS, POOL_LB_PENDING, LBIPAM
from controlplane.controllers.lb_pool import Pool, PoolError, load_pool, read_pool_file, save_pool
from controlplane.store.interface import retry_commit

from .options import common_parent
from .printers.table import format_table
from .session import Session, command


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lb-pool", parents=[common_parent()],
                       help="the LoadBalancer IP pool (LB-IPAM): show it, or set it from CIDRs or a file")
    p.add_argument("action", nargs="?", choices=("show", "set"), default="show")
    p.add_argument("blocks", nargs="*", metavar="CIDR|START-STOP", help="e.g. 192.168.1.240/28")
    p.add_argument("-f", "--filename", default=None,
                   help="YAML with `blocks: [{cidr: ...}, {start: ..., stop: ...}]` (or a CiliumLoadBalancerIPPool)")
    p.set_defaults(func=run_lb_pool)


def _parse(args: argparse.Namespace) -> Pool:
    try:
        if args.filename:
            if args.blocks:
                raise CommandError("give the pool as arguments or as a file (-f), not both")
            return read_pool_file(args.filename)
        if not args.blocks:
            raise CommandError("lb-pool set needs at least one CIDR or START-STOP range, or -f FILE")
        return Pool.parse(args.blocks)
    except PoolError as exc:
        raise CommandError(f"invalid pool: {exc}") from None


@command
def run_lb_pool(args: argparse.Namespace, session: Session) -> int:
    store = session.store
    if args.action == "set":
        pool = _parse(args)
        session.reconcile()          # settle pending changes first, so the pass below sees them

        def commit() -> None:
            with store.transaction() as tx:
                save_pool(tx, pool)
                LBIPAM(tx, pool).sync_all()
        retry_commit(commit)         # etcd: run again if another writer raced this pass
        print(f"lb-pool set: {pool} ({pool.size} address{'' if pool.size == 1 else 'es'})")
        return 0
    if args.blocks or args.filename:
        raise CommandError("show takes no arguments (did you mean `lb-pool set`?)")
    pool = load_pool(store)
    used = store.claims(POOL_LB_IPS)
    print(f"Pool:      {pool}")
    print(f"Addresses: {pool.size} ({len(used)} allocated, {max(pool.size - len(used), 0)} free)")
    rows = [["ADDRESS", "SERVICE"]] + [[ip, owner] for ip, owner in sorted(used.items(), key=lambda kv: _ip_key(kv[0]))]
    rows += [["<pending>", key] for key in sorted(store.claims(POOL_LB_PENDING))
             if store.try_get(Service, *key.split("/", 1)) is not None]
    if len(rows) > 1:
        print(format_table(rows))
    return 0


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(p) for p in ip.split(".")) if ip.count(".") == 3 else (1 << 9,)
