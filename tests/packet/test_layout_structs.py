"""layout.header_struct() reads a struct of the shared header for user space where no
map carries it (the GC's test-run request). Its reading is checked against the compiler's:
every map key and value struct bcc generated from the same header must come out with the
same fields, offsets and size."""
from __future__ import annotations

import ctypes as ct

import pytest

from controlplane.dataplane.layout import LayoutError, header_struct
from controlplane.dataplane.program import MAP_NAMES


def _layout(t: type) -> list[tuple[str, int, int]]:
    return [(name, getattr(t, name).offset, getattr(t, name).size) for name, *_ in t._fields_]


def test_header_structs_match_what_the_compiler_laid_out(loaded_dataplane):
    checked = set()
    for map_name in MAP_NAMES:
        table = loaded_dataplane.table(map_name)
        for t in (table.Key, table.Leaf):
            if not (isinstance(t, type) and issubclass(t, ct.Structure)):
                continue   # a plain integer key or value
            try:
                ours = header_struct(t.__name__)
            except LayoutError:
                continue   # not a header struct of plain scalars (bcc names its own)
            assert (ct.sizeof(ours), _layout(ours)) == (ct.sizeof(t), _layout(t)), t.__name__
            checked.add(t.__name__)
    assert {"svc_key", "svc_value", "backend", "ct_key", "ct_value"} <= checked, checked


def test_what_it_cannot_read_it_refuses():
    with pytest.raises(LayoutError, match="not defined"):
        header_struct("no_such_struct")
