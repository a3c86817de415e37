"""packing.py: rows packed in bulk (numpy, from the ctypes type's own offsets) are
byte for byte what ctypes makes of the same values, padding zeroed."""
from __future__ import annotations

import ctypes as ct

import numpy as np
import pytest

from controlplane.dataplane.installed import BACKEND_FIELDS, backend_columns, backend_row
from controlplane.dataplane.model import Backend, Frontend, ip_to_be32, port_to_be16
from controlplane.dataplane.packing import Packer, port_be16


class Entry(ct.Structure):       # odd offsets and padding, as a compiler lays them out
    _fields_ = [("a", ct.c_uint), ("b", ct.c_ushort), ("c", ct.c_ubyte), ("pad", ct.c_ubyte * 1),
                ("d", ct.c_ulonglong), ("e", ct.c_ubyte)]


def ctypes_bytes(rows: list[tuple]) -> bytes:
    out = b""
    for a, b, d in rows:
        e = Entry()
        e.a, e.b, e.d = a, b, d
        out += bytes(e)
    return out


def test_columns_and_rows_pack_like_ctypes():
    p = Packer(Entry, ("a", "b", "d"))
    rows = [(1, 2, 3), (0xFFFFFFFF, 0xFFFF, 2**64 - 1), (7, 0, 0)]
    want = ctypes_bytes(rows)
    assert p.columns(3, [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]]).tobytes() == want
    assert p.rows(rows).tobytes() == want
    assert bytes(p.array(rows)) == want
    assert p.struct.pack(*rows[0]) == want[:ct.sizeof(Entry)]
    assert p.columns(2, [5, [1, 2], 0]).tobytes() == ctypes_bytes([(5, 1, 0), (5, 2, 0)])  # a scalar fills


def test_fields_must_be_in_offset_order():
    with pytest.raises(ValueError, match="offset order"):
        Packer(Entry, ("b", "a"))


def test_plain_integer_types():
    p = Packer(ct.c_uint)
    assert p.columns(2, [[1, 2]]).tobytes() == bytes((ct.c_uint * 2)(1, 2))
    assert p.rows([(3,)]).tobytes() == bytes(ct.c_uint(3))


def test_port_column_is_network_order():
    assert list(port_be16([80, 8080, 65535])) == [port_to_be16(80), port_to_be16(8080), port_to_be16(65535)]


def test_backend_columns_agree_with_the_row():
    fe = Frontend("10.96.0.1", 80, "UDP")
    b = Backend("10.0.0.7", 8080, "terminating", 3)
    cols = backend_columns([b], [17], [9], [True])
    assert len(cols) == len(BACKEND_FIELDS)
    row = backend_row(fe, b, 9, True)
    assert row == tuple(c[0] for c in cols)
    assert row[:2] == (ip_to_be32("10.0.0.7"), port_to_be16(8080)) and row[3:6] == (17, 9, 3) and row[6]
    assert np.asarray(cols[0], dtype=np.uint32).tobytes() == bytes([10, 0, 0, 7])
