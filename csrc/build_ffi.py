"""cffi (API mode) build of controlplane._csrc: maglev.c plus the flow hash of flowhash.h.

Used by setup.py (`cffi_modules`), or run directly: `python csrc/build_ffi.py`.
"""
from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# setuptools wants sources relative to the project root it runs from.
SRC = os.path.relpath(HERE)

ffibuilder = FFI()

ffibuilder.cdef(
    """
    #define SVCXDP_FLOW_HASH_SEED_DEFAULT ...
    #define SVCXDP_MAGLEV_EMPTY ...
    #define SVCXDP_MAGLEV_MAX_M ...
    #define SVCXDP_MAGLEV_EINVAL_M ...
    #define SVCXDP_MAGLEV_EINVAL_ID ...
    #define SVCXDP_MAGLEV_EDUP_KEY ...
    #define SVCXDP_MAGLEV_ENOMEM ...
    #define SVCXDP_MAGLEV_EINVAL_ARG ...
    #define SVCXDP_MAGLEV_SEED_DEFAULT ...

    struct svcxdp_maglev_backend {
        const uint8_t *key;
        uint32_t key_len;
        uint32_t id;
        uint32_t weight;
    };

    uint64_t svcxdp_key_hash64(const uint8_t *data, size_t len, uint64_t seed);
    void svcxdp_maglev_perm(const uint8_t *key, size_t len, uint64_t seed, uint32_t m,
                            uint32_t *offset, uint32_t *skip);
    int svcxdp_is_prime(uint32_t n);
    int svcxdp_maglev_build(const struct svcxdp_maglev_backend *backends, uint32_t n,
                            uint32_t m, uint64_t seed, uint32_t *table);
    int svcxdp_maglev_build_flat(const uint8_t *keys, const uint32_t *key_off,
                                 const uint32_t *ids, const uint32_t *weights, uint32_t n,
                                 uint32_t m, uint64_t seed, uint32_t *table);

    uint32_t svcxdp_ffi_jhash_3words(uint32_t a, uint32_t b, uint32_t c, uint32_t seed);
    uint32_t svcxdp_ffi_flow_hash(uint32_t saddr, uint32_t sport, uint32_t dport,
                                  uint32_t proto, uint32_t seed);
    uint32_t svcxdp_ffi_flow_hash_affinity(uint32_t saddr, uint32_t dport,
                                           uint32_t proto, uint32_t seed);
    uint32_t svcxdp_ffi_maglev_slot(uint32_t hash, uint32_t m);
    """
)

ffibuilder.set_source(
    "controlplane._csrc",
    """
    #include "flowhash.h"
    #include "maglev.h"

    /* Out-of-line copies of the BPF-side inline functions: the very same
       source, compiled for user space. */
    static uint32_t svcxdp_ffi_jhash_3words(uint32_t a, uint32_t b, uint32_t c, uint32_t seed)
    { return svcxdp_jhash_3words(a, b, c, seed); }
    static uint32_t svcxdp_ffi_flow_hash(uint32_t saddr, uint32_t sport, uint32_t dport,
                                         uint32_t proto, uint32_t seed)
    { return svcxdp_flow_hash(saddr, sport, dport, proto, seed); }
    static uint32_t svcxdp_ffi_flow_hash_affinity(uint32_t saddr, uint32_t dport,
                                                  uint32_t proto, uint32_t seed)
    { return svcxdp_flow_hash_affinity(saddr, dport, proto, seed); }
    static uint32_t svcxdp_ffi_maglev_slot(uint32_t hash, uint32_t m)
    { return svcxdp_maglev_slot(hash, m); }
    """,
    sources=[os.path.join(SRC, "maglev.c")],
    include_dirs=[SRC],
    depends=[os.path.join(SRC, name) for name in ("flowhash.h", "maglev.h")],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi"), verbose=True)
