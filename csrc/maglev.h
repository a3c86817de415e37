/* SPDX-License-Identifier: Apache-2.0 */
/*
 * maglev.h - Maglev lookup-table population (user space only).
 *
 * Every node must compute the identical table from the same backends, so the
 * result depends only on (backend keys, ids, weights, m, seed): backends are
 * ordered by their key bytes, never by input order or by node-local state.
 */
#ifndef SVCXDP_MAGLEV_H
#define SVCXDP_MAGLEV_H

#include <stddef.h>
#include <stdint.h>

/* Table entry meaning "no backend"; backend id 0 is reserved for it. */
#define SVCXDP_MAGLEV_EMPTY 0U

/* Default seed for the offset/skip hashes; every node must share it. */
#define SVCXDP_MAGLEV_SEED_DEFAULT 0x7376637864700001ULL

/* Largest table size accepted: keeps pos + skip < 2^32. */
#define SVCXDP_MAGLEV_MAX_M (1U << 24)

/* Error codes (negative return values). */
#define SVCXDP_MAGLEV_EINVAL_M      (-1) /* m not prime, < 2 or > SVCXDP_MAGLEV_MAX_M */
#define SVCXDP_MAGLEV_EINVAL_ID     (-2) /* a backend with weight > 0 has id 0 */
#define SVCXDP_MAGLEV_EDUP_KEY      (-3) /* two backends with weight > 0 share a key */
#define SVCXDP_MAGLEV_ENOMEM        (-4)
#define SVCXDP_MAGLEV_EINVAL_ARG    (-5) /* NULL table or backends/key, n > INT32_MAX */

struct svcxdp_maglev_backend {
	const uint8_t *key;  /* stable identity, e.g. packed ip + be16 port */
	uint32_t key_len;
	uint32_t id;         /* written into the table; must not be 0 */
	uint32_t weight;     /* relative share; 0 = left out */
};

/*
 * 64-bit hash of a byte string (murmur3's fmix64 chained over 8-byte
 * little-endian words). Exposed so tests can check the Python twin.
 */
uint64_t svcxdp_key_hash64(const uint8_t *data, size_t len, uint64_t seed);

/* Offset and skip of one backend's permutation of [0, m). */
void svcxdp_maglev_perm(const uint8_t *key, size_t len, uint64_t seed, uint32_t m,
			uint32_t *offset, uint32_t *skip);

/* 1 if n is prime. */
int svcxdp_is_prime(uint32_t n);

/*
 * Fill table[0..m) with backend ids. Weights are honoured in every round
 * (a backend gets a turn each time its accumulated weight reaches the
 * largest weight), so shares are proportional to weights.
 * Returns the number of backends placed (0: no backend with weight > 0,
 * table filled with SVCXDP_MAGLEV_EMPTY), or a negative SVCXDP_MAGLEV_E*.
 * On error the table is left untouched.
 */
int svcxdp_maglev_build(const struct svcxdp_maglev_backend *backends, uint32_t n,
			uint32_t m, uint64_t seed, uint32_t *table);

/*
 * The same from flat arrays, for callers that hold keys as one buffer
 * (the cffi wrapper): backend i's key is keys[key_off[i] .. key_off[i+1]).
 */
int svcxdp_maglev_build_flat(const uint8_t *keys, const uint32_t *key_off,
			     const uint32_t *ids, const uint32_t *weights, uint32_t n,
			     uint32_t m, uint64_t seed, uint32_t *table);

#endif /* SVCXDP_MAGLEV_H */
