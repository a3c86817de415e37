"""Maglev consistent hashing and the shared flow hash.

native: the C in csrc/ through cffi (what the control plane uses);
reference: a pure-Python twin the tests compare against.
"""
from .backend import EMPTY, MaglevBackend, addr_key
from .flow import DEFAULT_FLOW_SEED, IPPROTO_TCP, IPPROTO_UDP, addr_word, port_word
from .native import DEFAULT_MAGLEV_SEED, build_table, flow_hash, maglev_slot, predict_backend
from .primes import DEFAULT_TABLE_SIZE, RECOMMENDED_SIZES, MaglevSizeWarning, validate_table_size

__all__ = [
    "DEFAULT_FLOW_SEED", "DEFAULT_MAGLEV_SEED", "DEFAULT_TABLE_SIZE", "EMPTY", "IPPROTO_TCP",
    "IPPROTO_UDP", "RECOMMENDED_SIZES", "MaglevBackend", "MaglevSizeWarning", "addr_key",
    "addr_word", "build_table", "flow_hash", "maglev_slot", "port_word", "predict_backend",
    "validate_table_size",
]
