"""Constants of the datapath, read from the one shared header (bpf/svcxdp.h).

Struct layouts of map keys and values come from bcc's generated Table.Key/Leaf types;
the #define constants, and the few structs no map holds (a test-run request), come from
here. None is written a second time in Python.
"""
from __future__ import annotations

import ctypes as ct
import re
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

from .source import SHARED_HEADER

_DEFINE = re.compile(r"^#define\s+SVCXDP_([A-Z0-9_]+)\s+(0x[0-9A-Fa-f]+|\d+)\b", re.M)


@lru_cache(maxsize=1)
def constants() -> Mapping[str, int]:
    text = SHARED_HEADER.read_text()
    return MappingProxyType({name: int(value, 0) for name, value in _DEFINE.findall(text)})


def const(name: str) -> int:
    """`const("ALG_RR")` -> the value of SVCXDP_ALG_RR."""
    try:
        return constants()[name]
    except KeyError:
        raise KeyError(f"SVCXDP_{name} is not defined in {SHARED_HEADER}") from None


def prefixed(prefix: str) -> dict[str, int]:
    """All constants SVCXDP_<prefix>_*, keyed by the rest of the name, lower case."""
    p = prefix.rstrip("_") + "_"
    return {k[len(p):].lower(): v for k, v in constants().items() if k.startswith(p)}


ALGORITHMS: Mapping[str, int] = MappingProxyType(prefixed("ALG"))
COUNTER_NAMES: Mapping[int, str] = MappingProxyType(
    {v: k for k, v in prefixed("CNT").items() if k != "max"})


# The fixed-width kernel types a header_struct() field may have. Byte order is not
# ctypes' business: a __be32 is stored as the u32 whose bytes are in network order.
_SCALARS = {"__u8": ct.c_uint8, "__u16": ct.c_uint16, "__u32": ct.c_uint32, "__u64": ct.c_uint64,
            "__s8": ct.c_int8, "__s16": ct.c_int16, "__s32": ct.c_int32, "__s64": ct.c_int64,
            "__be16": ct.c_uint16, "__be32": ct.c_uint32, "__be64": ct.c_uint64}
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_FIELD = re.compile(r"^\s*([A-Za-z_0-9]+)\s+([A-Za-z_][A-Za-z_0-9]*)\s*$")


class LayoutError(ValueError):
    pass


@lru_cache(maxsize=None)
def header_struct(name: str) -> type[ct.Structure]:
    """`struct <name>` of the shared header as a ctypes Structure, for a struct that no
    map holds (bcc generates types only for map keys and values). Only plain scalar
    fields are understood; anything else is refused rather than guessed. C and ctypes
    lay the fields out by the same natural-alignment rule, so offsets and size agree
    (tests/packet/test_layout_structs.py checks this against bcc's own types)."""
    text = _COMMENT.sub("", SHARED_HEADER.read_text())
    m = re.search(rf"\bstruct\s+{re.escape(name)}\s*\{{(.*?)\}}\s*;", text, re.S)
    if m is None:
        raise LayoutError(f"struct {name} is not defined in {SHARED_HEADER}")
    fields = []
    for decl in filter(str.strip, m.group(1).split(";")):
        f = _FIELD.match(decl)
        if f is None or f.group(1) not in _SCALARS:
            raise LayoutError(f"struct {name}: field {decl.strip()!r} is not a plain scalar "
                              f"({', '.join(_SCALARS)}); header_struct() does not read it")
        fields.append((f.group(2), _SCALARS[f.group(1)]))
    return type(name, (ct.Structure,), {"_fields_": fields})
