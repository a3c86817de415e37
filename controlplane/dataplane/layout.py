"""Constants of the datapath, read from the one shared header (bpf/svcxdp.h).

Struct layouts come from bcc's generated Table.Key/Leaf types; the #define
constants come from here. Neither is written a second time in Python.
"""
from __future__ import annotations

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
