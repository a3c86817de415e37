"""The `rev_nat` map: which frontend a backend address answers for.

A reply from a backend is translated back to its frontend once the datapath finds
the flow's forward conntrack entry, so a new flow costs one conntrack insert. An
address used by several frontends (two services selecting the same pod and port)
is marked shared: flows to it also record a reply entry, and the frontend written
first stays the entry's own, so replies of flows made before the sharing still
resolve. The writer calls `attach` before a backend can be chosen and `detach`
after it can no longer be. Whether an address is shared is also kept in its backend
entries (so a new flow needs no rev_nat lookup); `take_sharing_changes` tells the
writer which to rewrite.
"""
from __future__ import annotations

from .layout import const
from .packing import Packer, write_packed
from .model import PROTOCOLS, Frontend, be16_to_port, be32_to_ip, ip_to_be32, port_to_be16

F_SHARED = const("REVNAT_F_SHARED")
Address = tuple[str, int, str]  # (ip, port, protocol)


class RevNat:
    def __init__(self, table) -> None:
        self.table = table
        self._keys = Packer(table.Key, ("ip", "port", "proto"))
        self._values = Packer(table.Leaf, ("vip", "vport", "flags"))
        # first = the entry's frontend; tuples (one per backend address: a list costs more)
        self.users: dict[Address, tuple[Frontend, ...]] = {}
        self.writes = 0
        self._pending: dict[Address, None] = {}  # ordered set of entries to rewrite
        self._sharing_changed: dict[Address, None] = {}  # shared <-> not, since last taken

    def _key(self, addr: Address):
        k = self.table.Key()
        k.ip = ip_to_be32(addr[0])
        k.port = port_to_be16(addr[1])
        k.proto = PROTOCOLS[addr[2]]
        return k

    def _write(self, addr: Address) -> None:
        """Queue the entry's new value (or its deletion); `_flush` writes them."""
        self._pending[addr] = None
        self.writes += 1

    def flush(self) -> None:
        """Write what attach/detach(..., flush=False) queued, in one batch."""
        self._flush()

    def _flush(self) -> None:
        live: list[Address] = []
        firsts: list[Frontend] = []
        flags: list[int] = []
        users_of = self.users.get
        for addr in self._pending:
            users = users_of(addr)
            if not users:
                try:
                    del self.table[self._key(addr)]
                except KeyError:
                    pass
                continue
            live.append(addr)
            firsts.append(users[0])
            flags.append(F_SHARED if len(users) > 1 else 0)
        self._pending.clear()
        if not live:
            return
        n = len(live)
        keys = self._keys.columns(n, ([ip_to_be32(a[0]) for a in live], [port_to_be16(a[1]) for a in live],
                                      [PROTOCOLS[a[2]] for a in live]))
        values = self._values.columns(n, ([ip_to_be32(fe.vip) for fe in firsts],
                                          [port_to_be16(fe.port) for fe in firsts], flags))
        write_packed(self.table, keys, values)

    def attach(self, fe: Frontend, addresses: list[tuple[str, int]], flush: bool = True) -> None:
        users_of, pending, proto = self.users, self._pending, fe.protocol
        for ip, port in addresses:
            addr = (ip, port, proto)
            users = users_of.get(addr)
            if users is None:   # a new entry
                users_of[addr] = (fe,)
                pending[addr] = None
                self.writes += 1
            elif fe not in users:
                users_of[addr] = users = users + (fe,)
                if len(users) == 2:  # it just became shared
                    self._write(addr)
                    self._sharing_changed[addr] = None
        if flush:
            self._flush()

    def detach(self, fe: Frontend, addresses: list[tuple[str, int]], flush: bool = True) -> None:
        for ip, port in addresses:
            addr = (ip, port, fe.protocol)
            users = self.users.get(addr, ())
            if fe in users:
                i = users.index(fe)
                users = users[:i] + users[i + 1:]
                if not users:
                    del self.users[addr]
                else:
                    self.users[addr] = users
                    if len(users) == 1:
                        self._sharing_changed[addr] = None
                self._write(addr)
        if flush:
            self._flush()

    def shared(self, addr: Address) -> bool:
        """Several frontends use the address: flows to it record reply entries
        (the backend entries' SVCXDP_BACKEND_F_REPLY_ENTRY)."""
        return len(self.users.get(addr, ())) > 1

    def take_sharing_changes(self) -> list[Address]:
        """Addresses that became shared or stopped being shared since the last call;
        the writer rewrites their backend entries' flag."""
        out = list(self._sharing_changed)
        self._sharing_changed.clear()
        return out

    @property
    def pending(self) -> int:
        """Entries queued for rewriting and not yet flushed (after adopt: repairs)."""
        return len(self._pending)

    def adopt(self, installed: dict[Frontend, list[tuple[str, int]]]) -> None:
        """Rebuild from the maps: each address's users, its own frontend first; queue
        repairs of entries that are missing, wrong or no longer used. Nothing is
        written here: a read-only user must never race the agent (it could see the
        rev_nat entry of a service the agent is still writing as unused); the owning
        writer's next flush writes them."""
        primary: dict[Address, tuple[str, int]] = {}
        names = {v: k for k, v in PROTOCOLS.items()}
        for k, v in self.table.items():
            addr = (be32_to_ip(k.ip), be16_to_port(k.port), names.get(k.proto, "?"))
            primary[addr] = (be32_to_ip(v.vip), be16_to_port(v.vport))
        found: dict[Address, list[Frontend]] = {}
        for fe in sorted(installed):
            for ip, port in installed[fe]:
                found.setdefault((ip, port, fe.protocol), []).append(fe)
        for addr, users in found.items():
            first = primary.get(addr)
            users.sort(key=lambda fe: (fe.vip, fe.port) != first)
            self.users[addr] = tuple(users)
        for addr, users in self.users.items():
            first = primary.get(addr)
            if first != (users[0].vip, users[0].port) or self._stale_flag(addr):
                self._write(addr)
        for addr in set(primary) - set(self.users):
            self._write(addr)  # no frontend uses it any more: delete

    def _stale_flag(self, addr: Address) -> bool:
        try:
            v = self.table[self._key(addr)]
        except KeyError:
            return True
        return bool(v.flags & F_SHARED) != (len(self.users[addr]) > 1)
