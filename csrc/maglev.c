// SPDX-License-Identifier: Apache-2.0
/*
 * maglev.c - Maglev lookup-table population (Eisenbud et al., NSDI '16,
 * section 3.4) with weights honoured in every round.
 *
 * Memory is O(N + M): permutations are walked on the fly (pos += skip mod M)
 * instead of being materialised as an N x M matrix.
 * The pure-Python twin in controlplane/maglev/reference.py must follow every
 * step here; change both or neither.
 */
#include <stdlib.h>
#include <string.h>

#include "maglev.h"

#define K1 0x9e3779b97f4a7c15ULL /* 2^64 / golden ratio */
#define K2 0xc2b2ae3d27d4eb4fULL
#define K3 0x165667b19e3779f9ULL
#define SKIP_SEED_XOR 0x27d4eb2f165667c5ULL /* second, independent seed */

/* murmur3's 64-bit finaliser: a bijection with full avalanche. */
static inline uint64_t fmix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* Little-endian load, so the hash is the same on every host. */
static inline uint64_t load_le(const uint8_t *p, size_t n)
{
	uint64_t w = 0;

	for (size_t i = 0; i < n; i++)
		w |= (uint64_t)p[i] << (8 * i);
	return w;
}

uint64_t svcxdp_key_hash64(const uint8_t *data, size_t len, uint64_t seed)
{
	/* Length goes in first so that zero padding cannot collide. */
	uint64_t h = seed ^ ((uint64_t)len * K1);

	for (size_t i = 0; i < len; i += 8) {
		size_t n = len - i < 8 ? len - i : 8;

		h = fmix64(h ^ load_le(data + i, n) ^ K2);
	}
	return fmix64(h ^ K3);
}

void svcxdp_maglev_perm(const uint8_t *key, size_t len, uint64_t seed, uint32_t m,
			uint32_t *offset, uint32_t *skip)
{
	*offset = (uint32_t)(svcxdp_key_hash64(key, len, seed) % m);
	/* skip in [1, m-1]: coprime with a prime m, so the walk visits every slot. */
	*skip = (uint32_t)(svcxdp_key_hash64(key, len, seed ^ SKIP_SEED_XOR) % (m - 1)) + 1;
}

int svcxdp_is_prime(uint32_t n)
{
	if (n < 2)
		return 0;
	if (n % 2 == 0)
		return n == 2;
	for (uint32_t d = 3; (uint64_t)d * d <= n; d += 2)
		if (n % d == 0)
			return 0;
	return 1;
}

struct walker {
	const struct svcxdp_maglev_backend *b;
	uint32_t pos;  /* next preferred slot */
	uint32_t skip;
	uint64_t cum;  /* accumulated weight, see the turn rule below */
};

static int key_cmp(const struct svcxdp_maglev_backend *x, const struct svcxdp_maglev_backend *y)
{
	uint32_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
	int c = n ? memcmp(x->key, y->key, n) : 0;

	if (c)
		return c;
	return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

static int walker_cmp(const void *a, const void *b)
{
	return key_cmp(((const struct walker *)a)->b, ((const struct walker *)b)->b);
}

int svcxdp_maglev_build(const struct svcxdp_maglev_backend *backends, uint32_t n,
			uint32_t m, uint64_t seed, uint32_t *table)
{
	struct walker *w;
	uint64_t *used;
	uint32_t k = 0, filled = 0;
	uint64_t max_w = 0;

	if (!table || (n && !backends) || n > INT32_MAX)
		return SVCXDP_MAGLEV_EINVAL_ARG;
	if (m < 2 || m > SVCXDP_MAGLEV_MAX_M || !svcxdp_is_prime(m))
		return SVCXDP_MAGLEV_EINVAL_M;

	w = malloc((size_t)(n ? n : 1) * sizeof(*w));
	if (!w)
		return SVCXDP_MAGLEV_ENOMEM;

	for (uint32_t i = 0; i < n; i++) {
		const struct svcxdp_maglev_backend *b = &backends[i];

		if (b->weight == 0)
			continue;
		if (b->id == SVCXDP_MAGLEV_EMPTY || (b->key_len && !b->key)) {
			free(w);
			return b->id == SVCXDP_MAGLEV_EMPTY ? SVCXDP_MAGLEV_EINVAL_ID
							    : SVCXDP_MAGLEV_EINVAL_ARG;
		}
		w[k].b = b;
		w[k].cum = 0;
		svcxdp_maglev_perm(b->key, b->key_len, seed, m, &w[k].pos, &w[k].skip);
		if (b->weight > max_w)
			max_w = b->weight;
		k++;
	}

	/* Order by key, not by input: every node then builds the same table. */
	qsort(w, k, sizeof(*w), walker_cmp);
	for (uint32_t i = 1; i < k; i++) {
		if (key_cmp(w[i - 1].b, w[i].b) == 0) {
			free(w);
			return SVCXDP_MAGLEV_EDUP_KEY;
		}
	}

	if (k == 0) {
		/* No backend: an all-empty table, never a stale one. */
		for (uint32_t i = 0; i < m; i++)
			table[i] = SVCXDP_MAGLEV_EMPTY;
		free(w);
		return 0;
	}

	/* Occupancy as a bitmap: M/8 bytes stay in L1 while the walk probes. */
	used = calloc(((size_t)m + 63) / 64, sizeof(*used));
	if (!used) {
		free(w);
		return SVCXDP_MAGLEV_ENOMEM;
	}

	/*
	 * Rounds over the sorted backends. A backend takes a turn whenever its
	 * accumulated weight reaches the largest weight, so over any number of
	 * rounds its turns are proportional to its weight (not only in the first
	 * round, unlike Katran's V1). The heaviest backend turns every round,
	 * so each round claims at least one slot and the loop ends.
	 */
	for (;;) {
		for (uint32_t i = 0; i < k; i++) {
			struct walker *x = &w[i];
			uint32_t pos = x->pos;

			x->cum += x->b->weight;
			if (x->cum < max_w)
				continue;
			x->cum -= max_w;

			while (used[pos >> 6] & (1ULL << (pos & 63))) {
				pos += x->skip;
				if (pos >= m)
					pos -= m;
			}
			used[pos >> 6] |= 1ULL << (pos & 63);
			table[pos] = i;
			pos += x->skip;
			if (pos >= m)
				pos -= m;
			x->pos = pos;

			if (++filled == m)
				goto done;
		}
	}
done:
	/* Slots hold sorted indices while filling; turn them into ids. */
	for (uint32_t i = 0; i < m; i++)
		table[i] = w[table[i]].b->id;
	free(used);
	free(w);
	return (int)k;
}

int svcxdp_maglev_build_flat(const uint8_t *keys, const uint32_t *key_off,
			     const uint32_t *ids, const uint32_t *weights, uint32_t n,
			     uint32_t m, uint64_t seed, uint32_t *table)
{
	struct svcxdp_maglev_backend *b;
	int rc;

	if (n && (!keys || !key_off || !ids || !weights))
		return SVCXDP_MAGLEV_EINVAL_ARG;
	if (n > INT32_MAX)
		return SVCXDP_MAGLEV_EINVAL_ARG;
	b = malloc((size_t)(n ? n : 1) * sizeof(*b));
	if (!b)
		return SVCXDP_MAGLEV_ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		if (key_off[i + 1] < key_off[i]) {
			free(b);
			return SVCXDP_MAGLEV_EINVAL_ARG;
		}
		b[i].key = keys + key_off[i];
		b[i].key_len = key_off[i + 1] - key_off[i];
		b[i].id = ids[i];
		b[i].weight = weights[i];
	}
	rc = svcxdp_maglev_build(b, n, m, seed, table);
	free(b);
	return rc;
}
