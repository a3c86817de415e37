"""packing.py: rows packed in bulk (numpy, from the ctypes type's own offsets) are
byte for byte what ctypes makes of the same values, padding zeroed."""
from __future__ import annotations

import ctypes as ct

import numpy as np
import pytest

from controlplane.dataplane.installed import BACKEND_FIELDS, backend_columns, backend_row
from controlplane.dataplane.model import Backend, Frontend, ip_to_be32, port_to_be16
from controlplane.dataplane.packing import Packer, concat, port_be16


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


def test_concat_keeps_the_layout_and_order_with_or_without_copying():
    """Parts end to end in the packer's dtype (padding bytes zero, as ctypes lays
    them out); one filled part of that dtype comes back as it is."""
    p = Packer(Entry, ("a", "b", "d"))
    rows = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    one = p.rows(rows)
    assert concat([p.rows([]), one, p.rows([])], p.dtype) is one
    assert concat([p.rows(rows[:1]), p.rows([]), p.rows(rows[1:])], p.dtype).tobytes() == ctypes_bytes(rows)
    assert len(concat([p.rows([])], p.dtype)) == 0 and concat([], p.dtype).dtype == p.dtype
    plain = np.zeros(3, [("a", "<u4"), ("b", "<u2"), ("d", "<u8")])   # another layout: converted
    plain["a"], plain["b"], plain["d"] = [1, 4, 7], [2, 5, 8], [3, 6, 9]
    assert concat([plain], p.dtype).tobytes() == ctypes_bytes(rows)


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


def test_address_columns_round_trip_like_one_by_one():
    """be32_column / ips_of_be32 / ports_of_be16 (whole columns at once) give exactly
    what model.ip_to_be32 / be32_to_ip / be16_to_port give per value."""
    import random

    from controlplane.dataplane.model import be16_to_port, be32_to_ip
    from controlplane.dataplane.packing import be32_column, ips_of_be32, ports_of_be16
    rnd = random.Random(7)
    ips = ["0.0.0.0", "255.255.255.255", "10.244.0.1", "1.2.3.4"] + \
        [".".join(str(rnd.randrange(256)) for _ in range(4)) for _ in range(2000)]
    col = be32_column(ips)
    assert col.dtype == np.uint32
    assert col.tolist() == [ip_to_be32(ip) for ip in ips]
    assert ips_of_be32(col) == [be32_to_ip(v) for v in col.tolist()] == ips
    ports = [1, 80, 443, 8080, 65535] + [rnd.randrange(1, 65536) for _ in range(2000)]
    be = port_be16(ports)
    assert ports_of_be16(be) == [be16_to_port(v) for v in be.tolist()] == ports
    assert be32_column([]).size == 0 and ips_of_be32(np.zeros(0, np.uint32)) == []


@pytest.mark.parametrize("bad", ["1.2.3", "1.2.3.4.5", "1.2.3.256", "a.b.c.d"])
def test_an_address_column_with_a_bad_address_names_it(bad):
    from controlplane.dataplane.model import ModelError
    from controlplane.dataplane.packing import be32_column
    with pytest.raises(ModelError, match="is not an IPv4 address"):
        be32_column(["10.0.0.1", bad, "10.0.0.2"])


def test_read_table_reads_a_whole_map_into_columns():
    """read_table: every entry of a real BPF map, in batches, as a structured array
    per side (adoption reads the backends, services and rev_nat maps this way)."""
    import os
    from array import array
    from types import SimpleNamespace

    from controlplane.dataplane.libbpf import u32_array_map_create, u32_array_write
    from controlplane.dataplane.packing import read_table
    n = 20_000   # more than one 8,192-entry batch
    fd = u32_array_map_create("svcxdp_colsync", n)
    try:
        values = array("I", ((i * 2654435761) & 0xFFFFFFFF for i in range(n)))
        u32_array_write(fd, values)
        keys, vals = read_table(SimpleNamespace(map_fd=fd), Packer.whole(ct.c_uint), Packer.whole(ct.c_uint))
    finally:
        os.close(fd)
    assert keys["value"].tolist() == list(range(n))
    assert vals["value"].tolist() == values.tolist()


def test_whole_packer_reads_every_integer_field():
    p = Packer.whole(Entry)
    assert p.fields == ("a", "b", "c", "d", "e")   # the byte array "pad" is not a column
    e = Entry(a=1, b=2, c=3, d=4, e=5)
    row = np.frombuffer(bytes(e), p.dtype)[0]
    assert tuple(row.tolist()) == (1, 2, 3, 4, 5)
