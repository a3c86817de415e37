"""Many map entries at once, packed in bulk, without a ctypes object per entry.

A Packer derives a numpy structured dtype (and a `struct.Struct`, for reading) from
the ctypes type bcc generated for a map's key or value — field names, offsets and
the size all come from that type, so the layout is still written only in
bpf/svcxdp.h. Rows are packed from columns (one sequence per field: numpy fills
each field of the whole array in C) or from plain tuples, and written with one
BPF_MAP_UPDATE_BATCH (libbpf.py). At 100,000 entries the columns cost a few
milliseconds where a ctypes Structure per entry, or a struct.pack per row, cost
tenths of a second.
"""
from __future__ import annotations

import ctypes as ct
import struct
import warnings
from typing import Iterable, Sequence

import numpy as np

from .libbpf import delete_batch, lookup_batches_raw, update_batch
from .mapped import MappedArray

_CODES = {ct.c_ubyte: "B", ct.c_ushort: "H", ct.c_uint: "I", ct.c_ulonglong: "Q",
          ct.c_byte: "b", ct.c_short: "h", ct.c_int: "i", ct.c_longlong: "q"}
VALUE = "value"   # the one field of a plain integer key or value


class Packer:
    """Packs `fields` (in the order of their offsets); every other byte of the type
    is zero. A plain integer type has the one field VALUE."""

    def __init__(self, ctype, fields: Sequence[str] = ()) -> None:
        self.ctype = ctype
        size = ct.sizeof(ctype)
        if not hasattr(ctype, "_fields_"):  # a plain integer key or value
            self.struct = struct.Struct("<" + _CODES[ctype])
            self.fields: tuple[str, ...] = (VALUE,)
            self.dtype = np.dtype({"names": [VALUE], "formats": ["<" + _CODES[ctype]],
                                   "offsets": [0], "itemsize": size})
            return
        fmt, pos, wanted = "<", 0, list(fields)
        layout = sorted((getattr(ctype, name).offset, name, typ) for name, typ, *_ in ctype._fields_)
        taken = [name for _, name, _ in layout if name in wanted]
        if taken != wanted:
            raise ValueError(f"{ctype.__name__}: fields {wanted} must exist and be in offset order {taken}")
        names, formats, offsets = [], [], []
        for offset, name, typ in layout:
            if name not in wanted:
                continue
            fmt += "x" * (offset - pos) + _CODES[typ]
            pos = offset + ct.sizeof(typ)
            names.append(name)
            formats.append("<" + _CODES[typ])
            offsets.append(offset)
        fmt += "x" * (size - pos)
        self.struct = struct.Struct(fmt)
        if self.struct.size != size:
            raise ValueError(f"{ctype.__name__}: packed size {self.struct.size} != {size}")
        self.fields = tuple(names)
        self.dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size})

    @classmethod
    def whole(cls, ctype) -> "Packer":
        """A packer of every integer field of `ctype` (for reading entries back)."""
        if not hasattr(ctype, "_fields_"):
            return cls(ctype)
        return cls(ctype, [name for _, name in sorted((getattr(ctype, name).offset, name)
                                                      for name, typ, *_ in ctype._fields_ if typ in _CODES)])

    def rows(self, rows: Sequence[tuple]) -> np.ndarray:
        """Rows given as tuples in field order."""
        out = np.zeros(len(rows), self.dtype)
        if rows:
            out[:] = rows if isinstance(rows, list) else list(rows)
        return out

    def columns(self, n: int, columns: Sequence) -> np.ndarray:
        """n rows from one column per field (a sequence of n values, or one value for all)."""
        if len(columns) != len(self.fields):
            raise ValueError(f"{self.ctype.__name__}: {len(columns)} columns for fields {self.fields}")
        out = np.zeros(n, self.dtype)
        for name, col in zip(self.fields, columns):
            out[name] = col
        return out

    def array(self, rows: Iterable[tuple]) -> ct.Array:
        """The rows as the ctypes array bcc's own batch calls take."""
        packed = self.rows(list(rows))
        return (self.ctype * len(packed)).from_buffer(packed)


def concat(parts: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Packed arrays of one dtype end to end, in that dtype (np.concatenate would
    promote a structured dtype to one without its padding: not the map's layout).
    One part of that dtype (the others empty) is returned as it is, not copied."""
    filled = [p for p in parts if len(p)]
    if len(filled) == 1 and filled[0].dtype == dtype:
        return filled[0]
    out = np.zeros(sum(len(p) for p in parts), dtype)
    i = 0
    for p in parts:
        out[i:i + len(p)] = p
        i += len(p)
    return out


def write_packed(table, keys: np.ndarray, values: np.ndarray, mapping: MappedArray | None = None) -> int:
    """One batch update of len(keys) packed entries; returns that count. With the
    `mapping` of an array map (keys: plain u32 indexes), stored through it instead."""
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    if mapping is not None:
        return mapping.write(keys[VALUE], values)
    if len(keys):
        update_batch(table.map_fd, keys, values, len(keys))
    return len(keys)


def delete_packed(table, keys: np.ndarray) -> int:
    """Delete len(keys) packed keys with BPF_MAP_DELETE_BATCH (libbpf.delete_batch:
    keys not present are skipped); returns how many were present."""
    if not len(keys):
        return 0
    return delete_batch(table.map_fd, keys, keys.dtype.itemsize, len(keys))


def batch_write(table, key_packer: Packer, value_packer: Packer,
                keys: Sequence[tuple], values: Sequence[tuple], mapping: MappedArray | None = None) -> int:
    """One batch update of len(keys) entries given as rows; returns that count."""
    if not keys:
        return 0
    return write_packed(table, key_packer.rows(keys), value_packer.rows(values), mapping)


def port_be16(ports) -> np.ndarray:
    """Ports (host order) as u16 whose in-memory bytes are network order (htons,
    for a whole column)."""
    return np.asarray(ports, dtype=np.uint16).astype(">u2").view(np.uint16)


def read_table(table, keys: Packer, values: Packer,
               mapping: MappedArray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every entry of a map (an array map: every index), read with
    BPF_MAP_LOOKUP_BATCH into two structured arrays of the packers' dtypes: adoption
    reads 100,000 backends this way with no Python step per entry. With the
    `mapping` of an array map (plain u32 keys), copied out of it instead."""
    if mapping is not None:
        vals = mapping.read(values.dtype)
        ids = np.zeros(len(vals), keys.dtype)
        ids[VALUE] = np.arange(len(vals), dtype=np.uint32)
        return ids, vals
    ksize, vsize = keys.dtype.itemsize, values.dtype.itemsize
    kparts: list[np.ndarray] = []
    vparts: list[np.ndarray] = []
    for kbuf, vbuf, n in lookup_batches_raw(table.map_fd, ksize, vsize):
        kparts.append(np.frombuffer(kbuf, keys.dtype, n).copy())
        vparts.append(np.frombuffer(vbuf, values.dtype, n).copy())
    if not kparts:
        return np.zeros(0, keys.dtype), np.zeros(0, values.dtype)
    return np.concatenate(kparts), np.concatenate(vparts)


def be32_column(ips: Sequence[str]) -> np.ndarray:
    """Dotted IPv4 addresses (validated already: model.Backend, Frontend, or the
    maps) as u32
    whose in-memory bytes are network order, for a whole column: the octets are
    parsed in C from one joined string, not one inet_aton per address."""
    n = len(ips)
    if n == 0:
        return np.zeros(0, np.uint32)
    try:
        with warnings.catch_warnings():   # text that is no number ends the parse early
            warnings.simplefilter("ignore", DeprecationWarning)
            octets = np.fromstring(".".join(ips), dtype=np.uint32, sep=".")
    except ValueError:   # ... or, in newer numpy, raises
        octets = np.zeros(0, np.uint32)
    if octets.size != 4 * n or (octets > 255).any():
        # not four octets each: convert one by one, which names the bad address
        from .model import check_ipv4, ip_to_be32
        for ip in ips:
            check_ipv4(ip, "address")
        return np.array([ip_to_be32(ip) for ip in ips], dtype=np.uint32)
    o = octets.reshape(n, 4)
    return o[:, 0] | o[:, 1] << 8 | o[:, 2] << 16 | o[:, 3] << 24


_OCTET_TEXT = [str(i) for i in range(256)]


def ips_of_be32(col) -> list[str]:
    """The inverse of be32_column: dotted addresses of a u32 column."""
    octets = np.ascontiguousarray(col, dtype="<u4").view(np.uint8).reshape(-1, 4).tolist()
    t = _OCTET_TEXT
    return [f"{t[a]}.{t[b]}.{t[c]}.{t[d]}" for a, b, c, d in octets]


def ports_of_be16(col) -> list[int]:
    """Host-order ports of a column of u16 stored in network order."""
    return np.asarray(col, dtype=np.uint16).byteswap().tolist()
