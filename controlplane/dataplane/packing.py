"""Many map entries at once, without a ctypes object per entry.

A Packer derives a `struct.Struct` from the ctypes type bcc generated for a map's
key or value (so the layout is still written only in bpf/svcxdp.h), packs rows of
plain tuples into one buffer, and turns it into the ctypes array that a batch
update takes. At 100,000 entries this is several times faster than building and
filling a ctypes Structure per entry.
"""
from __future__ import annotations

import ctypes as ct
import struct
from typing import Iterable, Sequence

_CODES = {ct.c_ubyte: "B", ct.c_ushort: "H", ct.c_uint: "I", ct.c_ulonglong: "Q",
          ct.c_byte: "b", ct.c_short: "h", ct.c_int: "i", ct.c_longlong: "q"}


class Packer:
    """Packs tuples of `fields` (in the order of their offsets); every other byte of
    the type is zero."""

    def __init__(self, ctype, fields: Sequence[str] = ()) -> None:
        self.ctype = ctype
        size = ct.sizeof(ctype)
        if not hasattr(ctype, "_fields_"):  # a plain integer key or value
            self.struct = struct.Struct("<" + _CODES[ctype])
            return
        fmt, pos, wanted = "<", 0, list(fields)
        layout = sorted((getattr(ctype, name).offset, name, typ) for name, typ, *_ in ctype._fields_)
        taken = [name for _, name, _ in layout if name in wanted]
        if taken != wanted:
            raise ValueError(f"{ctype.__name__}: fields {wanted} must exist and be in offset order {taken}")
        for offset, name, typ in layout:
            if name not in wanted:
                continue
            fmt += "x" * (offset - pos) + _CODES[typ]
            pos = offset + ct.sizeof(typ)
        fmt += "x" * (size - pos)
        self.struct = struct.Struct(fmt)
        if self.struct.size != size:
            raise ValueError(f"{ctype.__name__}: packed size {self.struct.size} != {size}")

    def array(self, rows: Iterable[tuple]) -> ct.Array:
        pack = self.struct.pack
        buf = b"".join(pack(*row) for row in rows)
        n = len(buf) // self.struct.size
        return (self.ctype * n).from_buffer_copy(buf)


def batch_write(table, key_packer: Packer, value_packer: Packer,
                keys: Sequence[tuple], values: Sequence[tuple]) -> int:
    """One batch update of len(keys) entries; returns that count."""
    if not keys:
        return 0
    table.items_update_batch(key_packer.array(keys), value_packer.array(values))
    return len(keys)
