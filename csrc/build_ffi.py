"""cffi (API mode) build of controlplane._csrc: maglev.c, samples.c and the hashes of
flowhash.h.

Used by setup.py (`cffi_modules`), or run directly: `python csrc/build_ffi.py`.
"""
from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# setuptools wants sources relative to the project root it runs from.
SRC = os.path.relpath(HERE)

ffibuilder = FFI()

def header_declarations(path: str) -> str:
    """A header (maglev.h, samples.h) as cffi's cdef wants it: the same declarations, so
    nothing is written twice. Preprocessor lines go, except #defines, whose values cffi
    reads itself (not the include guard's)."""
    out = []
    for line in open(path).read().splitlines():
        stripped = line.strip()
        if stripped.startswith("#define SVCXDP_") and not stripped.split()[1].endswith("_H"):
            out.append(f"#define {stripped.split()[1]} ...")
        elif not stripped.startswith("#"):
            out.append(line)
    return "\n".join(out)


ffibuilder.cdef(
    header_declarations(os.path.join(HERE, "maglev.h"))
    + header_declarations(os.path.join(HERE, "samples.h"))
    + """
    #define SVCXDP_FLOW_HASH_SEED_DEFAULT ...
    /* Out-of-line copies of flowhash.h's inline functions (see set_source). */
    uint32_t svcxdp_ffi_jhash_3words(uint32_t a, uint32_t b, uint32_t c, uint32_t seed);
    uint32_t svcxdp_ffi_flow_hash(uint32_t saddr, uint32_t sport, uint32_t dport,
                                  uint32_t proto, uint32_t seed);
    uint32_t svcxdp_ffi_flow_hash_affinity(uint32_t saddr, uint32_t dport,
                                           uint32_t proto, uint32_t seed);
    uint32_t svcxdp_ffi_maglev_slot(uint32_t hash, uint32_t m);
    uint32_t svcxdp_ffi_udp_recent_hash(uint32_t saddr, uint32_t daddr, uint32_t sport,
                                        uint32_t dport);
    uint32_t svcxdp_ffi_ct_set_hash(uint32_t saddr, uint32_t daddr, uint32_t sport,
                                    uint32_t dport, uint32_t proto, uint32_t dir, uint32_t seed);
    uint32_t svcxdp_ffi_fib_cache_slot(uint32_t daddr, uint32_t ifindex, uint32_t bits);
    void svcxdp_ffi_revnat_checks(const uint32_t *ip, const uint16_t *port, const uint8_t *proto,
                                  uint8_t *out, size_t n);
    """
)

ffibuilder.set_source(
    "controlplane._csrc",
    """
    #include "flowhash.h"
    #include "maglev.h"
    #include "samples.h"

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
    static uint32_t svcxdp_ffi_udp_recent_hash(uint32_t saddr, uint32_t daddr, uint32_t sport,
                                               uint32_t dport)
    { return svcxdp_udp_recent_hash(saddr, daddr, sport, dport); }
    static uint32_t svcxdp_ffi_ct_set_hash(uint32_t saddr, uint32_t daddr, uint32_t sport,
                                           uint32_t dport, uint32_t proto, uint32_t dir,
                                           uint32_t seed)
    { return svcxdp_ct_set_hash(saddr, daddr, sport, dport, proto, dir, seed); }
    static uint32_t svcxdp_ffi_fib_cache_slot(uint32_t daddr, uint32_t ifindex, uint32_t bits)
    { return svcxdp_fib_cache_slot(daddr, ifindex, bits); }
    /* A column at a time: the writer checks 100,000 addresses in one call. */
    static void svcxdp_ffi_revnat_checks(const uint32_t *ip, const uint16_t *port, const uint8_t *proto,
                                         uint8_t *out, size_t n)
    {
        for (size_t i = 0; i < n; i++)
            out[i] = (uint8_t)svcxdp_revnat_check(ip[i], port[i], proto[i]);
    }
    """,
    sources=[os.path.join(SRC, name) for name in ("maglev.c", "samples.c")],
    include_dirs=[SRC],
    depends=[os.path.join(SRC, name) for name in ("flowhash.h", "maglev.h", "samples.h")],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi"), verbose=True)
