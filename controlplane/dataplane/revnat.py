"""The `rev_nat` map: which frontend a backend address answers for.

A reply from a backend is translated back to its frontend once the datapath finds
the flow's forward conntrack entry, so a new flow costs one conntrack insert. An
address used by several frontends (two services selecting the same pod and port)
is marked shared: flows to it also record a reply entry, and the frontend written
first stays the entry's own, so replies of flows made before the sharing still
resolve. The writer calls `attach` before a backend can be chosen and `detach`
after it can no longer be. Whether an address is shared is also kept in its backend
entries (so a new flow needs no rev_nat lookup); `take_sharing_changes` tells the
writer which to rewrite. Rewriting an entry the map holds raises the writer's
`replacing` flag (replacing.py): a reply looking its address up meanwhile may miss it.
"""
from __future__ import annotations

from itertools import chain, repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Sequence

import numpy as np

from controlplane._csrc import ffi, lib

from .layout import const
from .packing import Packer, be32_column, concat, delete_packed, ips_of_be32, port_be16, ports_of_be16, read_table, write_packed
from .model import PROTOCOLS, Frontend

if TYPE_CHECKING:
    from .replacing import ReplacingFlag

F_SHARED = const("REVNAT_F_SHARED")
Address = tuple[str, int, str]  # (ip, port, protocol)
# Frontend's own (dataclass) order, as a key: compared in C, not through Frontend.__lt__
_FE_ORDER = attrgetter("vip", "port", "protocol", "scope")
_vip, _port, _protocol = attrgetter("vip"), attrgetter("port"), attrgetter("protocol")


def address_keys(ip_col: np.ndarray, port_col: np.ndarray, proto: np.ndarray | Sequence[int] | int) -> np.ndarray:
    """Addresses (ip, port, protocol) as one u64 each, from their packed columns
    (be32_column, port_be16, and the PROTOCOLS code of each or one for all): a whole
    batch's addresses sorted and matched in numpy, not as a tuple each."""
    keys = ip_col.astype(np.uint64) << np.uint64(24) | port_col.astype(np.uint64) << np.uint64(8)
    keys |= np.asarray(proto, np.uint64)
    return keys


def _frontend_keys(vip_col: np.ndarray, vport_col: np.ndarray) -> np.ndarray:
    """Frontends (vip, port) as one u64 each, from their packed columns."""
    return vip_col.astype(np.uint64) << np.uint64(16) | vport_col.astype(np.uint64)


def key_checks(ip_col: np.ndarray, port_col: np.ndarray, proto: np.ndarray | int) -> np.ndarray:
    """svcxdp_revnat_check (csrc/flowhash.h, the datapath's own) of each address, packed
    as its key holds it (be32_column, port_be16, protocol numbers or one for all)."""
    ips = np.ascontiguousarray(ip_col, np.uint32)
    ports = np.ascontiguousarray(port_col, np.uint16)
    protos = np.ascontiguousarray(np.broadcast_to(np.asarray(proto, np.uint8), ips.shape))
    out = np.empty(len(ips), np.uint8)
    lib.svcxdp_ffi_revnat_checks(ffi.from_buffer("uint32_t[]", ips), ffi.from_buffer("uint16_t[]", ports),
                                 ffi.from_buffer("uint8_t[]", protos), ffi.from_buffer("uint8_t[]", out), len(ips))
    return out


def _checked(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which entries (as read_table gives them) carry their address's key_check (an
    earlier agent wrote none: 0)."""
    return values["key_check"] == key_checks(keys["ip"], keys["port"], keys["proto"])


def _entries_are_their_frontends(keys: np.ndarray, values: np.ndarray, checked: np.ndarray,
                                 in_use: list[Address], order: list[Frontend], counts: list[int]) -> bool:
    """Whether the map (its `keys` and `values` as read_table gives them) holds exactly
    one entry per address in use, naming the one frontend using it, unshared: what a
    clean restart finds, compared as columns (at 100,000 addresses a dict of the entries
    and a comparison of two dicts took ~0.3 s). Each must carry its address's check
    (`checked`: _checked's answer)."""
    if len(keys) != len(in_use) or (values["flags"] & F_SHARED).any() or not checked.all():
        return False
    # (a protocol the model does not know gives a code no frontend's has: unequal)
    fe_protos = np.fromiter((PROTOCOLS[fe.protocol] for fe in order), np.uint64, len(order))
    want_keys = address_keys(be32_column([a[0] for a in in_use]), port_be16([a[1] for a in in_use]),
                             np.repeat(fe_protos, counts))
    have_keys = address_keys(keys["ip"], keys["port"], keys["proto"])
    want_values = np.repeat(_frontend_keys(be32_column([fe.vip for fe in order]), port_be16([fe.port for fe in order])),
                            counts)
    have_values = _frontend_keys(values["vip"], values["vport"])
    want_order, have_order = np.argsort(want_keys), np.argsort(have_keys)
    return bool(np.array_equal(want_keys[want_order], have_keys[have_order]) and
                np.array_equal(want_values[want_order], have_values[have_order]))


class RevNat:
    def __init__(self, table, replacing: "ReplacingFlag") -> None:
        self.table = table
        self.replacing = replacing
        self._keys = Packer(table.Key, ("ip", "port", "proto"))
        self._values = Packer(table.Leaf, ("vip", "vport", "flags", "key_check"))
        # first = the entry's frontend; tuples (one per backend address: a list costs more)
        self.users: dict[Address, tuple[Frontend, ...]] = {}
        self.writes = 0
        # entries to rewrite, in order: whether the map may hold one already (else the
        # write inserts it, and no lookup can miss it for that)
        self._pending: dict[Address, bool] = {}
        self._sharing_changed: dict[Address, None] = {}  # shared <-> not, since last taken
        self.shared_count = 0   # addresses with several users (0: no backend row needs the flag)
        # entries attach_many queued as packed rows (keys, values); `_flush` writes them
        self._fresh: list[tuple[np.ndarray, np.ndarray]] = []

    def share_keys(self, addresses: Sequence[Address], fes: Sequence[Frontend], counts: Sequence[int],
                   frontends: dict[int, Frontend]) -> None:
        """Hold the caller's objects in place of equal copies adoption made (the
        caller keeps its own anyway), changing no user, entry or sharing: `addresses`
        are those of the frontends `fes` (counts[i] each, in order), equal to users'
        keys; `frontends` maps (by id) adoption's frontends to the caller's."""
        if not self.shared_count and len(addresses) == len(self.users):
            # every address has one user and all are here (a clean restart): made
            # afresh as adopt() makes it
            self.users = dict(zip(addresses, chain.from_iterable(repeat((fe,), n) for fe, n in zip(fes, counts))))
            return
        mine = {a: a for a in addresses}
        get = mine.get
        swapped: dict[int, tuple[Frontend, ...]] = {}   # by id: a frontend's addresses share one tuple
        users: dict[Address, tuple[Frontend, ...]] = {}
        for addr, users_of in self.users.items():
            new = swapped.get(id(users_of))
            if new is None:
                swapped[id(users_of)] = new = tuple(frontends.get(id(fe), fe) for fe in users_of)
            users[get(addr, addr)] = new
        self.users = users

    def _write(self, addr: Address) -> None:
        """Queue the entry's new value (or its deletion); `_flush` writes them."""
        self._pending.setdefault(addr, True)   # (one queued as new is still new)
        self.writes += 1

    def flush(self) -> None:
        """Write what attach/detach(..., flush=False) queued, in one batch."""
        self._flush()

    def _flush(self) -> None:
        # attach_many's rows first: an entry queued since (an address attach_many
        # added that became shared or unused) is then written over it
        if self._fresh:
            write_packed(self.table, concat([k for k, _ in self._fresh], self._keys.dtype),
                         concat([v for _, v in self._fresh], self._values.dtype))
            self._fresh.clear()
        try:
            self._write_entries(self._pending)
        except BaseException:
            # left queued for the next flush, which may find some written: a rewrite
            for addr in self._pending:
                self._pending[addr] = True
            raise
        # cleared once written
        self._pending.clear()

    def _write_entries(self, queued: dict[Address, bool]) -> None:
        users_of = self.users.get
        pending = list(queued)
        users = [users_of(addr) for addr in pending]
        if not all(users):   # entries no frontend uses any more: one batch delete
            unused = [addr for addr, u in zip(pending, users) if not u]
            delete_packed(self.table, self._packed_keys(unused))
            pending = [addr for addr, u in zip(pending, users) if u]
            users = [u for u in users if u]
        if not pending:
            return
        n = len(pending)
        firsts = [u[0] for u in users]
        flags = [F_SHARED if len(u) > 1 else 0 for u in users]
        key_cols = self._key_columns(pending)
        keys = self._keys.columns(n, key_cols)
        values = self._values.columns(n, (be32_column([fe.vip for fe in firsts]),
                                          port_be16([fe.port for fe in firsts]), flags, key_checks(*key_cols)))
        with self.replacing.raised(when=any(map(queued.__getitem__, pending))):
            write_packed(self.table, keys, values)

    @staticmethod
    def _key_columns(addrs: list[Address]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ips, ports, protos = zip(*addrs)
        return be32_column(ips), port_be16(ports), np.array([PROTOCOLS[p] for p in protos], np.uint8)

    def _packed_keys(self, addrs: list[Address]):
        return self._keys.columns(len(addrs), self._key_columns(addrs))

    def attach(self, fe: Frontend, addresses: list[tuple[str, int]], flush: bool = True) -> None:
        users_of, pending, proto = self.users, self._pending, fe.protocol
        for ip, port in addresses:
            addr = (ip, port, proto)
            users = users_of.get(addr)
            if users is None:   # a new entry
                users_of[addr] = (fe,)
                pending.setdefault(addr, False)   # (queued already: its deletion, of an entry held)
                self.writes += 1
            elif fe not in users:
                users_of[addr] = users = users + (fe,)
                if len(users) == 2:  # it just became shared
                    self.shared_count += 1
                    self._write(addr)
                    self._sharing_changed[addr] = None
        if flush:
            self._flush()

    def attach_many(self, fes: list[Frontend], counts: list[int], ips: list[str], ports: list[int],
                    ip_col: np.ndarray, port_col: np.ndarray, vip_col: np.ndarray | None = None,
                    vport_col: np.ndarray | None = None) -> bool:
        """attach(fes[i], the next counts[i] addresses, flush=False) for each i in turn
        (`fes` distinct, as the writer's batches are: one state per frontend), in bulk
        when none of the addresses has a user yet or is queued (a full sync into empty
        maps): the entries are queued as rows packed from the columns given
        (`ip_col`, `port_col`: the ips and ports packed, be32_column and port_be16;
        `vip_col`, `vport_col`: the frontends' vips and ports packed alike, if the caller
        has them), each with the frontend that lists it first. An address listed by
        several of them (a NodePort service's ClusterIP and NodePort frontends share
        every backend) becomes shared exactly as attach() makes it, found by sorting
        the packed addresses (_shared_in_batch). Returns False if it had to go one
        frontend at a time (an address in use or queued already)."""
        protocols = list(map(_protocol, fes))
        one_protocol = len(set(protocols)) == 1
        if one_protocol:   # (the usual): no per-address column of it
            proto_col = repeat(protocols[0])
        else:
            proto_col = chain.from_iterable(map(repeat, protocols, counts))
        # each address's users: its frontend alone (one tuple per frontend, shared by its
        # addresses; an address listed twice keeps the last, mended below)
        new = dict(zip(zip(ips, ports, proto_col), chain.from_iterable(map(repeat, zip(fes), counts))))
        # (isdisjoint of two key views walks the smaller one; of a view and a dict, the dict)
        if not self.users.keys().isdisjoint(new.keys()) or not self._pending.keys().isdisjoint(new.keys()):
            start = 0
            for fe, n in zip(fes, counts):
                self.attach(fe, list(zip(ips[start:start + n], ports[start:start + n])), flush=False)
                start += n
            return False
        n = len(ips)
        counts_col = np.asarray(counts, np.int64)
        proto_codes = list(map(PROTOCOLS.__getitem__, protocols))
        proto_packed = proto_codes[0] if one_protocol else np.repeat(proto_codes, counts_col)
        firsts: np.ndarray | slice = slice(None)   # the rows to queue: every address's first listing
        flags: np.ndarray | int = 0
        if len(new) != n:   # some address listed more than once
            firsts, shared = self._shared_in_batch(new, fes, counts_col, ips, ports, protocols, ip_col, port_col,
                                                   proto_packed)
            flags = np.zeros(n, np.uint32)
            flags[shared] = F_SHARED
            flags = flags[firsts]
        if self.users:
            self.users.update(new)
        else:   # (none yet: the dict made here is the whole map, no copy needed)
            self.users = new
        self.writes += len(new)
        vips = be32_column(list(map(_vip, fes))) if vip_col is None else vip_col
        vports = port_be16(list(map(_port, fes))) if vport_col is None else vport_col
        rows = len(new)
        proto_rows = proto_packed if one_protocol else proto_packed[firsts]
        key_cols = (ip_col[firsts], port_col[firsts], proto_rows)
        self._fresh.append((
            self._keys.columns(rows, key_cols),
            self._values.columns(rows, (np.repeat(vips, counts_col)[firsts], np.repeat(vports, counts_col)[firsts],
                                        flags, key_checks(*key_cols)))))
        return True

    def _shared_in_batch(self, new: dict[Address, tuple[Frontend, ...]], fes: list[Frontend], counts_col: np.ndarray,
                         ips: list[str], ports: list[int], protocols: list[str], ip_col: np.ndarray,
                         port_col: np.ndarray, proto_packed: np.ndarray | int) -> tuple[np.ndarray, list[int]]:
        """attach_many's addresses listed more than once: their users in `new` set to every
        frontend listing them, in order, as attach() makes them (once each), and those
        with two or more counted shared. Returns a mask of the positions that list an
        address first, and the positions of the shared addresses' first listings."""
        n = len(ips)
        packed = address_keys(ip_col, port_col, proto_packed)
        order = np.argsort(packed, kind="stable")   # equal addresses together, in listing order
        ordered = packed[order]
        repeats = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1   # (in `order`) each listing after a first
        firsts = np.ones(n, bool)
        firsts[order[repeats]] = False
        grouped = np.zeros(n, bool)                                 # (in `order`) the listings of such addresses
        grouped[repeats] = True
        grouped[repeats - 1] = True
        owner = np.repeat(np.arange(len(fes)), counts_col).tolist()   # each listing's frontend
        shared: list[int] = []
        changed = self._sharing_changed
        key: Address | None = None
        users: tuple[Frontend, ...] = ()
        listed: set[int] = set()   # the address's frontends so far, by index in `fes`
        first = 0
        for pos in order[grouped].tolist():
            i = owner[pos]
            here = (ips[pos], ports[pos], protocols[i])
            if here != key:   # the first listing of the next address
                key, users, listed, first = here, (fes[i],), {i}, pos
            elif i not in listed:   # (by index: `fes[i] in users` ran Frontend.__eq__ per user)
                listed.add(i)
                users += (fes[i],)
                if len(users) == 2:   # it just became shared
                    shared.append(first)
                    changed[key] = None
            new[key] = users
        self.shared_count += len(shared)
        self.writes += len(shared)
        return firsts, shared

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
                        self.shared_count -= 1
                        self._sharing_changed[addr] = None
                self._write(addr)
        if flush:
            self._flush()

    def shared(self, addr: Address) -> bool:
        """Several frontends use the address: flows to it record reply entries
        (the backend entries' SVCXDP_BACKEND_F_REPLY_ENTRY)."""
        return len(self.users.get(addr, ())) > 1

    def shared_keys(self) -> np.ndarray:
        """address_keys of every shared address, sorted."""
        shared = [addr for addr, users in self.users.items() if len(users) > 1]
        if not shared:
            return np.zeros(0, np.uint64)
        ips, ports, protocols = zip(*shared)
        return np.sort(address_keys(be32_column(ips), port_be16(ports), [PROTOCOLS[p] for p in protocols]))

    def take_sharing_changes(self) -> list[Address]:
        """Addresses that became shared or stopped being shared since the last call;
        the writer rewrites their backend entries' flag."""
        out = list(self._sharing_changed)
        self._sharing_changed.clear()
        return out

    @property
    def pending(self) -> int:
        """Entries queued for rewriting and not yet flushed (after adopt: repairs)."""
        return len(self._pending) + sum(len(k) for k, _ in self._fresh)

    def adopt(self, installed: dict[Frontend, list[tuple[str, int]]]) -> None:
        """Rebuild from the maps: each address's users, its own frontend first; queue
        repairs of entries that are missing, wrong or no longer used. Nothing is
        written here: a read-only user must never race the agent (it could see the
        rev_nat entry of a service the agent is still writing as unused); the owning
        writer's next flush writes them."""
        keys, values = read_table(self.table, Packer.whole(self.table.Key), Packer.whole(self.table.Leaf))
        checked = _checked(keys, values)
        users_of = self.users
        shared: list[Address] = []
        order = sorted(installed, key=_FE_ORDER)
        # First as if no address served two frontends (the usual case): one dict made
        # in C. If some does, the dict comes out shorter and the loop below counts.
        in_use: list[Address] = []
        for fe in order:
            proto = fe.protocol
            in_use += [(ip, port, proto) for ip, port in installed[fe]]
        counts = [len(installed[fe]) for fe in order]
        alone = dict(zip(in_use, chain.from_iterable(repeat((fe,), n) for fe, n in zip(order, counts))))
        if not users_of and len(alone) == len(in_use):
            self.users = users_of = alone
            if _entries_are_their_frontends(keys, values, checked, in_use, order, counts):
                self.shared_count = 0   # nothing to repair (a clean restart)
                return
        else:
            for fe in order:
                proto, alone_fe = fe.protocol, (fe,)
                for ip, port in installed[fe]:
                    addr = (ip, port, proto)
                    users = users_of.get(addr)
                    if users is None:
                        users_of[addr] = alone_fe
                    else:
                        users_of[addr] = users + alone_fe
                        if len(users) == 1:
                            shared.append(addr)
        names = {v: k for k, v in PROTOCOLS.items()}
        addrs = list(zip(ips_of_be32(keys["ip"]), ports_of_be16(keys["port"]),
                         [names.get(p, "?") for p in keys["proto"].tolist()]))
        # address -> (its entry's frontend (vip, port), its shared flag, its check right)
        primary = dict(zip(addrs, zip(zip(ips_of_be32(values["vip"]), ports_of_be16(values["vport"])),
                                      ((values["flags"] & F_SHARED) != 0).tolist(), checked.tolist())))
        self.shared_count = len(shared)
        for addr in shared:   # the entry's own frontend first
            first = primary.get(addr, (None,))[0]
            users_of[addr] = tuple(sorted(users_of[addr], key=lambda fe: (fe.vip, fe.port) != first))
        for addr, users in self.users.items():
            entry = primary.get(addr)
            if entry is None or entry != ((users[0].vip, users[0].port), len(users) > 1, True):
                self._write(addr)   # missing, another frontend's, a stale shared flag, no check
        for addr in primary.keys() - self.users.keys():
            self._write(addr)  # no frontend uses it any more: delete
