"""The unconfirmed flow tables, ct_unconfirmed_pod (flows from pods) and ct_unconfirmed
(flows from outside), read and written as flow tables.

Each map is an array of sets (bpf/svcxdp.h, struct ct_set; bpf/conntrack.h says why): a
flow's entry sits in one of CT_SET_WAYS slots of the set its key hashes to, under the
tables' secret seed (map ct_set_seed, written once by the loader). FlowSets presents one as
the other flow tables' bcc and pinned tables present theirs — a mapping of ct_key to
ct_value with `Key`, `Leaf`, `max_entries`, `items()`, `raw_batches()` — so the flows
listing, the metrics, the trace, the tests and the benches need not know the layout.

Writes from here (tests, benches, `del table[key]`) read a set, change it and write it
whole: a datapath write to the same set in between is lost. Nothing in the agent writes
this table; what writes it here runs while no traffic does.
"""
from __future__ import annotations

import ctypes as ct
import os
import sys
from typing import Iterator

import numpy as np

from .layout import const
from .libbpf import BatchCursor, lookup_batches_raw

TABLES = ("ct_unconfirmed_pod", "ct_unconfirmed")
WAYS = const("CT_SET_WAYS")
SEED_MAP = "ct_set_seed"


def new_seed() -> int:
    """A random seed, never 0 (0 would mean "not written yet")."""
    return int.from_bytes(os.urandom(4), "little") or 1


def write_seed_once(seed_table) -> int:
    """The table's seed: the one it holds, else a new one written now (a new map)."""
    k = seed_table.Key(0)
    seed = int(seed_table[k].value)
    if seed == 0:
        seed = new_seed()
        seed_table[k] = seed_table.Leaf(seed)
    return seed


def set_of(src: int, dst: int, sport: int, dport: int, proto: int, direction: int, seed: int,
           sets: int) -> int:
    """The set of a key whose fields are these (as the key holds them: addresses and ports
    in network order, read as native integers), as bpf/conntrack.h's ctp_set computes it."""
    from controlplane._csrc import lib
    return lib.svcxdp_ffi_ct_set_hash(src, dst, sport, dport, proto, direction, seed) & (sets - 1)


def set_index(key, seed: int, sets: int) -> int:
    """The set of `key` (a ct_key)."""
    return set_of(key.src, key.dst, key.sport, key.dport, key.proto, key.dir, seed, sets)


def slot_for_new(cursor: int) -> int:
    """The slot a new key takes in a set whose cursor (`next`) is `cursor`
    (bpf/conntrack.h, ctp_slot_for_new): the slots in turn, free or not. The set's cursor
    then becomes that slot + 1."""
    return cursor & (WAYS - 1)


class FlowSets:
    """The mapping view of one set map (`sets`: its bcc or pinned table)."""

    @classmethod
    def of(cls, raw_table, name: str) -> "FlowSets":
        """The view of set table `name` (one of TABLES), given a function from a map's
        name to its table."""
        return cls(raw_table(name), raw_table(SEED_MAP))

    def __init__(self, sets, seed_table) -> None:
        self.sets = sets     # (no `map_fd` here: a batch read of it is sets, not entries)
        self.seed_table = seed_table
        slot_field = dict(sets.Leaf._fields_)["slot"]
        self.Slot = slot_field._type_
        fields = dict(self.Slot._fields_)
        self.Key, self.Leaf = fields["key"], fields["value"]
        self.n_sets = sets.max_entries
        self.max_entries = self.n_sets * WAYS
        self._set_size = ct.sizeof(sets.Leaf)
        self._slot_at = sets.Leaf.slot.offset
        self._slot_size = ct.sizeof(self.Slot)
        self._key_size = ct.sizeof(self.Key)
        self._proto_at = self.Slot.key.offset + self.Key.proto.offset
        # where each slot's key.proto sits in a set's bytes (0: a free slot)
        self._slot_protos = [self._slot_at + w * self._slot_size + self._proto_at for w in range(WAYS)]

    @property
    def seed(self) -> int:
        return int(self.seed_table[self.seed_table.Key(0)].value)

    # ---- reading ----------------------------------------------------------------------
    def _all(self) -> np.ndarray:
        """Every set's bytes, one row per set (one BPF_MAP_LOOKUP_BATCH per 8,192)."""
        rows = [np.frombuffer(bytes(values[:n * self._set_size]), np.uint8).reshape(n, self._set_size)
                for _, values, n in lookup_batches_raw(self.sets.map_fd, 4, self._set_size)]
        return np.concatenate(rows) if rows else np.zeros((0, self._set_size), np.uint8)

    def _slots(self) -> np.ndarray:
        """The used slots' bytes (key then value), one row each."""
        rows = self._all()
        slots = rows[:, self._slot_at:self._slot_at + WAYS * self._slot_size].reshape(-1, self._slot_size)
        return slots[slots[:, self._proto_at] != 0]

    def _columns(self) -> tuple[bytes, bytes, int]:
        """The used slots' keys and values, each packed, and their count."""
        slots = self._slots()
        k0, v0 = self.Slot.key.offset, self.Slot.value.offset
        return (slots[:, k0:k0 + self._key_size].tobytes(),
                slots[:, v0:v0 + ct.sizeof(self.Leaf)].tobytes(), len(slots))

    def count_slice(self, cursor: BatchCursor, max_sets: int) -> int:
        """Used slots in the next `max_sets` sets from `cursor` on (the walk starts at the
        first set again once it reached the last: `cursor.started` is then False)."""
        used = 0
        for _, values, n in lookup_batches_raw(self.sets.map_fd, 4, self._set_size, limit=max_sets,
                                               cursor=cursor):
            rows = np.frombuffer(values, np.uint8, count=n * self._set_size).reshape(n, self._set_size)
            used += int(np.count_nonzero(rows[:, self._slot_protos]))
        return used

    def raw_batches(self) -> Iterator[tuple[bytes, bytes]]:
        """(keys, values) as packed bytes, as the pinned tables' raw_batches gives them."""
        keys, values, _ = self._columns()
        yield keys, values

    def lookup_batches(self) -> Iterator[tuple[ct.Array, ct.Array, int]]:
        """(keys, values, count) as libbpf.lookup_batches gives a hash map's entries (and
        gives these, for this table): here the used slots, in one chunk."""
        keys, values, n = self._columns()
        if n:
            yield (self.Key * n).from_buffer_copy(keys), (self.Leaf * n).from_buffer_copy(values), n

    def items(self) -> Iterator[tuple]:
        for row in self._slots():
            slot = self.Slot.from_buffer_copy(row.tobytes())
            yield slot.key, slot.value

    def keys(self) -> Iterator:
        return (k for k, _ in self.items())

    def values(self) -> Iterator:
        return (v for _, v in self.items())

    __iter__ = keys

    def __len__(self) -> int:
        return len(self._slots())

    def _read_set(self, key):
        i = set_index(key, self.seed, self.n_sets)
        return self.sets.Key(i), self.sets[self.sets.Key(i)]

    @staticmethod
    def _same(a, b) -> bool:
        return bytes(a) == bytes(b)

    def __getitem__(self, key):
        _, s = self._read_set(key)
        for slot in s.slot:
            if slot.key.proto and self._same(slot.key, key):
                return self.Leaf.from_buffer_copy(bytes(slot.value))
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    # ---- writing (no traffic meanwhile: see the module's docstring) ---------------------
    def __setitem__(self, key, value) -> None:
        """As the datapath's BPF_ANY insert: the key's slot, else slot_for_new's."""
        i, s = self._read_set(key)
        w = next((n for n, slot in enumerate(s.slot) if slot.key.proto and self._same(slot.key, key)), None)
        if w is None:
            w = slot_for_new(s.next)
            s.next = w + 1
        ct.memmove(ct.addressof(s.slot[w].key), ct.addressof(key), self._key_size)
        ct.memmove(ct.addressof(s.slot[w].value), ct.addressof(value), ct.sizeof(self.Leaf))
        self.sets[i] = s

    def __delitem__(self, key) -> None:
        i, s = self._read_set(key)
        for slot in s.slot:
            if slot.key.proto and self._same(slot.key, key):
                ct.memset(ct.addressof(slot.key), 0, self._key_size)
                self.sets[i] = s
                return
        raise KeyError(key)

    def clear(self) -> None:
        """Every set as new: no entries, its ring from the first slot again."""
        empty = self.sets.Leaf()
        for i in np.flatnonzero(self._all().any(axis=1)):
            self.sets[self.sets.Key(int(i))] = empty

    def items_delete_batch(self, keys=None) -> None:
        """bcc's name: delete these keys (those present), or every entry."""
        if keys is None:
            self.clear()
            return
        for key in keys:
            try:
                del self[key]
            except KeyError:
                continue

    def fill(self, keys, values) -> int:
        """Write entries in order, placed as the datapath's inserts place them (the key's
        set, slot_for_new's slot), until every slot is used or the keys run out: a table
        "full" for the benches. Returns how many were written."""
        before = self._all()
        sets = before.copy()
        used = np.zeros((self.n_sets, WAYS), bool)
        for w, at in enumerate(self._slot_protos):
            used[:, w] = sets[:, at] != 0
        free = int((~used).sum())
        next_at = self.sets.Leaf.next.offset
        written = 0
        for key, value in zip(keys, values):
            if free == 0:
                break
            i = set_index(key, self.seed, self.n_sets)
            cursor = int.from_bytes(sets[i, next_at:next_at + 4].tobytes(), sys.byteorder)
            w = slot_for_new(cursor)
            sets[i, next_at:next_at + 4] = np.frombuffer((w + 1).to_bytes(4, sys.byteorder), np.uint8)
            if not used[i, w]:
                used[i, w] = True
                free -= 1
            at = self._slot_at + w * self._slot_size
            sets[i, at:at + self._key_size] = np.frombuffer(bytes(key), np.uint8)
            v0 = at + self.Slot.value.offset
            sets[i, v0:v0 + ct.sizeof(self.Leaf)] = np.frombuffer(bytes(value), np.uint8)
            written += 1
        for i in np.flatnonzero((sets != before).any(axis=1)):
            self.sets[self.sets.Key(int(i))] = self.sets.Leaf.from_buffer_copy(sets[i].tobytes())
        return written
