"""Read-only access to a dataplane's pinned maps, without building the program.

`Dataplane.load` compiles and verifies the whole XDP program (tens of seconds on a
loaded machine) before a map can be read. A reader that looks at time-limited state
(ClientIP affinity entries with a 2 s timeout) would then read it long after the
moment it was asked about. Here the maps are opened by their pins and their key and
value types are decoded from the BTF the kernel keeps for each map — the same
struct definitions (bpf/svcxdp.h) the program was compiled from, so no layout is
written a second time.
"""
from __future__ import annotations

import ctypes as ct
import os
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from . import flowsets
from .libbpf import MAP_IN_MAP_TYPES, PERCPU_MAP_TYPES, ffi, lib, lookup_batches
from .mapped import MappedArray, open_mapped

_BTF_MAGIC = 0xEB9F
_NONZERO = re.compile(rb"[^\x00]")
# BTF kinds (include/uapi/linux/btf.h)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_STRUCT_CODES = {ct.c_uint8: "B", ct.c_uint16: "H", ct.c_uint32: "I", ct.c_uint64: "Q",
                 ct.c_int8: "b", ct.c_int16: "h", ct.c_int32: "i", ct.c_int64: "q"}
_INTS = {(1, False): ct.c_uint8, (2, False): ct.c_uint16, (4, False): ct.c_uint32,
         (8, False): ct.c_uint64, (1, True): ct.c_int8, (2, True): ct.c_int16,
         (4, True): ct.c_int32, (8, True): ct.c_int64}


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ffi.errno or -rc
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class Btf:
    """The types of one BTF object, as ctypes types on demand."""

    def __init__(self, raw: bytes) -> None:
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", raw)
        if magic != _BTF_MAGIC:
            raise ValueError("not BTF (bad magic)")
        self._strings = raw[hdr_len + str_off:hdr_len + str_off + str_len]
        self._types: list[tuple | None] = [None]  # id 0 is void
        self._built: dict[int, type] = {}
        self._parse(raw[hdr_len + type_off:hdr_len + type_off + type_len])

    @classmethod
    def from_kernel(cls, btf_id: int) -> "Btf":
        fd = _check(lib().bpf_btf_get_fd_by_id(btf_id), f"bpf_btf_get_fd_by_id({btf_id})")
        try:
            info = ffi.new("struct bpf_btf_info *")
            size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_btf_info"))
            _check(lib().bpf_obj_get_info_by_fd(fd, info, size), "BTF info")
            buf = ffi.new("uint8_t[]", info.btf_size)
            want = info.btf_size
            info = ffi.new("struct bpf_btf_info *")
            info.btf = int(ffi.cast("uintptr_t", buf))
            info.btf_size = want
            size[0] = ffi.sizeof("struct bpf_btf_info")
            _check(lib().bpf_obj_get_info_by_fd(fd, info, size), "BTF info")
            return cls(bytes(ffi.buffer(buf, want)))
        finally:
            os.close(fd)

    def _name(self, off: int) -> str:
        return self._strings[off:self._strings.index(b"\0", off)].decode()

    def _parse(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31)
            extra: object = None
            if kind == _INT:
                (enc,) = struct.unpack_from("<I", data, pos)
                extra, pos = enc, pos + 4
            elif kind == _ARRAY:
                extra, pos = struct.unpack_from("<III", data, pos), pos + 12
            elif kind in (_STRUCT, _UNION):
                extra = [struct.unpack_from("<III", data, pos + 12 * i) for i in range(vlen)]
                pos += 12 * vlen
            elif kind in (_ENUM, _FUNC_PROTO):
                pos += 8 * vlen
            elif kind in (_VAR, _DECL_TAG):
                pos += 4
            elif kind == _DATASEC:
                pos += 12 * vlen
            elif kind == _ENUM64:
                pos += 12 * vlen
            self._types.append((kind, name_off, size_or_type, kflag, extra))

    def ctype(self, type_id: int) -> type:
        if type_id not in self._built:
            self._built[type_id] = self._build(type_id)
        return self._built[type_id]

    def _build(self, type_id: int) -> type:
        kind, name_off, size_or_type, kflag, extra = self._types[type_id]
        if kind in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
            return self.ctype(size_or_type)
        if kind == _INT:
            bits = extra & 0xFF
            if bits != size_or_type * 8 or (extra >> 16) & 0xFF:
                raise ValueError(f"BTF type {type_id}: bitfield integers are not supported")
            return _INTS[(size_or_type, bool((extra >> 24) & 1))]
        if kind in (_ENUM, _ENUM64):
            return _INTS[(size_or_type, False)]
        if kind == _ARRAY:
            elem, _index, n = extra
            return self.ctype(elem) * n
        if kind in (_STRUCT, _UNION):
            return self._record(type_id, kind, name_off, size_or_type, kflag, extra)
        raise ValueError(f"BTF type {type_id}: kind {kind} cannot be a map key or value")

    def _record(self, type_id, kind, name_off, size, kflag, members) -> type:
        """A struct or union with the members at their BTF offsets (padding made
        explicit, so the ctypes layout is the compiler's, whatever the alignment)."""
        fields: list[tuple[str, type]] = []
        at = 0
        for i, (m_name, m_type, m_off) in enumerate(members):
            bit_off = m_off & 0xFFFFFF if kflag else m_off
            if kflag and m_off >> 24 or bit_off % 8:
                raise ValueError(f"BTF type {type_id}: bitfields are not supported")
            typ = self.ctype(m_type)
            name = self._name(m_name) or f"_anon{i}"
            if kind == _STRUCT:
                if bit_off // 8 > at:
                    fields.append((f"_pad{i}", ct.c_uint8 * (bit_off // 8 - at)))
                at = bit_off // 8 + ct.sizeof(typ)
            fields.append((name, typ))
        if kind == _STRUCT and size > at:
            fields.append(("_pad_end", ct.c_uint8 * (size - at)))
        base = ct.Structure if kind == _STRUCT else ct.Union
        cls = type(self._name(name_off) or f"anon{type_id}", (base,), {"_pack_": 1, "_fields_": fields})
        if ct.sizeof(cls) != size:
            raise ValueError(f"BTF type {type_id}: decoded size {ct.sizeof(cls)} != {size}")
        return cls


def struct_format(ctype: type) -> tuple[str, tuple[str, ...]]:
    """A `struct` format and field names for a flat BTF-decoded struct (integer fields
    and padding only), so that a batch of raw entries is decoded at C speed by
    struct.iter_unpack: the layout still comes from the kernel's BTF, not from here."""
    fmt, names = ["="], []
    for name, typ in ctype._fields_:
        if name.startswith("_pad"):
            fmt.append(f"{ct.sizeof(typ)}x")
        elif typ in _STRUCT_CODES:
            fmt.append(_STRUCT_CODES[typ])
            names.append(name)
        else:
            raise ValueError(f"{ctype.__name__}.{name}: only integer fields can be unpacked in bulk")
    if struct.calcsize("".join(fmt)) != ct.sizeof(ctype):
        raise ValueError(f"{ctype.__name__}: struct format does not cover its {ct.sizeof(ctype)} bytes")
    return "".join(fmt), tuple(names)


@lru_cache(maxsize=1)
def _possible_ranges() -> tuple[tuple[int, int], ...]:
    """The kernel's possible CPU ids, as (first, last) ranges: fixed for the boot, read
    once (the scrape and the writer's per-CPU sizes ask again and again)."""
    out = []
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        out.append((int(lo), int(hi or lo)))
    return tuple(out)


def possible_cpus() -> int:
    """How many values a per-CPU map holds per key (the kernel's possible CPUs)."""
    return sum(hi - lo + 1 for lo, hi in _possible_ranges())


def cpu_id_limit() -> int:
    """One more than the highest possible CPU id (the kernel's nr_cpu_ids): the rows an
    array indexed by bpf_get_smp_processor_id() needs (bpf/maps.h backend_stats), which
    is possible_cpus() wherever the ids have no gap."""
    return max(hi for _, hi in _possible_ranges()) + 1


def percpu_slot(size: int) -> int:
    """Bytes of one CPU's copy of a per-CPU map's value: the value rounded up to 8."""
    return (size + 7) & ~7


def percpu_value_size(size: int) -> int:
    """Bytes of every CPU's copy of one per-CPU value of `size` bytes, as lookups and
    batch operations take them."""
    return possible_cpus() * percpu_slot(size)


class PinnedTable:
    """One pinned map: Key and Leaf types, `items()`, `table[key]` (bcc's Table names).
    A per-CPU map's `table[key]` is the list of its per-CPU values, as bcc's."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.map_fd = _check(lib().bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")
        try:
            info = ffi.new("struct bpf_map_info *")
            size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_map_info"))
            _check(lib().bpf_obj_get_info_by_fd(self.map_fd, info, size), f"map info of {path}")
            if not info.btf_id:
                raise ValueError(f"map {path} carries no BTF: its types are unknown")
            btf = Btf.from_kernel(info.btf_id)
            self.Key = btf.ctype(info.btf_key_type_id)
            self.Leaf = btf.ctype(info.btf_value_type_id)
            if (ct.sizeof(self.Key), ct.sizeof(self.Leaf)) != (info.key_size, info.value_size):
                raise ValueError(f"map {path}: BTF types do not match its key/value sizes")
            self.max_entries = info.max_entries
            # Per-CPU values come as one array, each slot rounded up to 8 bytes.
            self.cpus = possible_cpus() if info.type in PERCPU_MAP_TYPES else 0
        except BaseException:
            os.close(self.map_fd)
            raise

    def _ptr(self, obj) -> object:
        return ffi.cast("void *", ct.addressof(obj))

    def __getitem__(self, key):
        if self.cpus:
            slot = percpu_slot(ct.sizeof(self.Leaf))
            raw = (ct.c_uint8 * (slot * self.cpus))()
            if lib().bpf_map_lookup_elem(self.map_fd, self._ptr(key), ffi.cast("void *", ct.addressof(raw))) != 0:
                raise KeyError(key)
            return [self.Leaf.from_buffer_copy(raw, i * slot) for i in range(self.cpus)]
        leaf = self.Leaf()
        if lib().bpf_map_lookup_elem(self.map_fd, self._ptr(key), self._ptr(leaf)) != 0:
            raise KeyError(key)
        return leaf

    def keys(self) -> Iterator:
        key, prev = self.Key(), None
        while lib().bpf_map_get_next_key(self.map_fd, ffi.NULL if prev is None else self._ptr(prev),
                                         self._ptr(key)) == 0:
            yield key
            prev, key = key, self.Key()

    def items(self) -> Iterator[tuple]:
        for key in self.keys():
            try:
                yield key, self[key]
            except KeyError:   # deleted since it was listed
                continue

    def items_lookup_batch(self) -> Iterator[tuple]:
        """(key, value) pairs read in batches (one syscall per 8192 entries), leaving out
        all-zero values: an array map's unused slots (the backends map is mostly those) are
        skipped at C speed instead of one Python step each. A pair is valid until the next."""
        size = ct.sizeof(self.Leaf)
        for keys, values, n in lookup_batches(self):
            raw = bytes(memoryview(values).cast("B")[:n * size])
            pos = 0
            while (hit := _NONZERO.search(raw, pos)) is not None:
                i = hit.start() // size
                yield keys[i], values[i]
                pos = (i + 1) * size

    def raw_batches(self) -> Iterator[tuple[bytes, bytes]]:
        """(keys, values) as bytes, one pair per batch of a hash map read with
        BPF_MAP_LOOKUP_BATCH (a million entries: ~120 syscalls): a reader can look for a
        byte pattern in a whole batch, or count a field, at C speed."""
        ksize, vsize = ct.sizeof(self.Key), ct.sizeof(self.Leaf)
        for keys, values, n in lookup_batches(self):
            yield (bytes(memoryview(keys).cast("B")[:n * ksize]), bytes(memoryview(values).cast("B")[:n * vsize]))

    def unpacked_batches(self) -> Iterator[tuple[Iterator[tuple], Iterator[tuple]]]:
        """(keys, values) iterators of plain integer tuples, one pair per batch, fields in
        `struct_format` order: no Python step per field."""
        kfmt, vfmt = struct_format(self.Key)[0], struct_format(self.Leaf)[0]
        for keys, values in self.raw_batches():
            yield struct.iter_unpack(kfmt, keys), struct.iter_unpack(vfmt, values)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def close(self) -> None:
        if self.map_fd >= 0:
            os.close(self.map_fd)
            self.map_fd = -1


class PinnedMaps:
    """The pinned maps of one dataplane instance, opened lazily; `table(name)` as
    Dataplane.table, for readers such as affinity_maps.live_entries."""

    def __init__(self, pin_dir: Path, kind: type | None = None) -> None:
        self.pin_dir = Path(pin_dir)
        self.kind = kind or PinnedTable   # WritableTable for an owner (Dataplane.open)
        self._tables: dict[str, PinnedTable] = {}
        self._fds: dict[str, int] = {}
        self._sets: dict[str, flowsets.FlowSets] = {}
        self._mapped: dict[str, MappedArray | None] = {}

    def table(self, name: str):
        """The map `name` as a table; the unconfirmed flows as mappings over their sets
        (flowsets.py)."""
        if name in flowsets.TABLES:
            if name not in self._sets:
                self._sets[name] = flowsets.FlowSets.of(self.raw_table, name)
            return self._sets[name]
        return self.raw_table(name)

    def raw_table(self, name: str) -> PinnedTable:
        """The map `name` itself, whatever its layout."""
        if name not in self._tables:
            self._tables[name] = self.kind(self.pin_dir / name)
        return self._tables[name]

    def fd(self, name: str) -> int:
        """A pinned object with no BTF types to decode (the Maglev map-in-map, a
        program): its fd, owned by this object."""
        if name not in self._fds:
            self._fds[name] = _check(lib().bpf_obj_get(str(self.pin_dir / name).encode()),
                                     f"bpf_obj_get({self.pin_dir / name})")
        return self._fds[name]

    def has(self, name: str) -> bool:
        return (self.pin_dir / name).exists()

    def mapped(self, name: str) -> MappedArray | None:
        """The array map `name` mapped into this process (mapped.py), or None if it was
        not made mmapable; one per map, unmapped by close()."""
        if name not in self._mapped:
            self._mapped[name] = open_mapped(self.raw_table(name).map_fd)
        return self._mapped[name]

    def close(self) -> None:
        for m in self._mapped.values():
            if m is not None:
                m.close()
        self._mapped.clear()
        for t in self._tables.values():
            t.close()
        self._tables.clear()
        self._sets.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class WritableTable(PinnedTable):
    """A pinned map with the part of bcc's Table interface the map writer and the
    agent use (`table[key] = leaf`, `del table[key]`, `sum`), so an agent can own a
    dataplane compiled by another process without loading bcc (build.py). As in
    bcc, a per-CPU map's Leaf is the array of its per-CPU values; a map of maps
    (no BTF) has u32 keys and values (an fd written, a map id read)."""

    def __init__(self, path: Path) -> None:
        try:
            super().__init__(path)
        except ValueError:
            info = _map_info_of(path)
            if info.type not in MAP_IN_MAP_TYPES:
                raise
            self.name, self.Key, self.Leaf = path.name, ct.c_uint, ct.c_uint
            self.max_entries, self.cpus = info.max_entries, 0
            self.map_fd = _check(lib().bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")
        if self.cpus:
            self.sLeaf = self.Leaf
            if ct.sizeof(self.sLeaf) % 8:
                raise ValueError(f"map {path}: per-CPU values of {ct.sizeof(self.sLeaf)} bytes are not 8-aligned")
            self.Leaf = self.sLeaf * self.cpus

    def __getitem__(self, key):
        leaf = self.Leaf()
        if lib().bpf_map_lookup_elem(self.map_fd, self._ptr(key), self._ptr(leaf)) != 0:
            raise KeyError(key)
        return leaf

    def __setitem__(self, key, leaf) -> None:
        rc = lib().bpf_map_update_elem(self.map_fd, self._ptr(key), self._ptr(leaf), 0)
        if rc < 0:
            raise OSError(-rc, f"update of map {self.name}: {os.strerror(-rc)}")

    def __delitem__(self, key) -> None:
        if lib().bpf_map_delete_elem(self.map_fd, self._ptr(key)) != 0:
            raise KeyError(key)

    def sum(self, key):
        """The per-CPU values of an integer map added up (bcc's PerCpuArray.sum)."""
        return self.sLeaf(sum(self[key]))


def _map_info_of(path: Path):
    from .libbpf import map_info
    fd = _check(lib().bpf_obj_get(str(path).encode()), f"bpf_obj_get({path})")
    try:
        return map_info(fd)
    finally:
        os.close(fd)
