/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * lc.h — the connection-counting schedulers of IPVS: lc, wlc, sed, nq.
 *
 * backend_conns[id] holds the flows of the counted family open on a backend.
 * It goes up when such a flow is created (its conntrack entry gets
 * SVCXDP_CT_F_COUNTED) and down once per flow: on the first FIN or RST in either
 * direction, or when the datapath finds the flow's entry expired, reopened or
 * pointing at a removed backend — and then only if the flow's backend id still
 * names that backend (conntrack.h, ct_uncount: ids are reused, and a reused id's
 * count starts again from 0). A flow's first packets on two CPUs at once count
 * once: only the CPU whose entry is recorded counts. Entries the LRU evicts, and UDP flows whose
 * tuple never comes back, are never seen again and keep their count: the count is
 * an upper bound that drifts upwards, which the writer's recount corrects.
 * Counts are read as signed and clamped at 0 (two CPUs closing one flow at once
 * may decrement twice).
 */
#ifndef SVCXDP_LC_H
#define SVCXDP_LC_H

#include "maps.h"

static __always_inline int alg_counts_conns(__u8 alg)
{
	return alg >= SVCXDP_ALG_LC && alg <= SVCXDP_ALG_NQ;
}

static __always_inline void conns_add(__u32 backend_id, int delta)
{
	__u32 *c = backend_conns.lookup(&backend_id);
	/* Result unused: clang emits BPF_XADD, which bcc's clang can do. */
	if (c)
		__sync_fetch_and_add(c, delta);
}

/* 1 if x != 0, for x < 2^63, as arithmetic (the barrier keeps clang from turning
 * it back into a compare-and-branch). */
static __always_inline __u64 nonzero(__u64 x)
{
	__u64 neg = 0 - x;
	asm volatile("" : "+r"(neg));
	return neg >> 63;
}

/* A backend's count, read as signed and clamped at 0 without a branch (two CPUs
 * closing one flow at once may have decremented twice). */
static __always_inline __u64 conns_of(__u32 backend_id)
{
	__u32 *c = backend_conns.lookup(&backend_id);
	if (!c)
		return 0;
	__s64 n = (__s32)*c;
	return n & ~(n >> 63);
}

/* Scan the slots of a service for the backend with the lowest cost (conns + k) / w,
 * ties to the earlier slot as in IPVS:
 *   lc:  k = 0, w = 1        wlc: k = 0, w = weight
 *   sed: k = 1, w = weight   nq:  k = 0 for an idle backend, else as sed
 * (nq: "an idle backend if there is one, else sed", with idle ones costing 0).
 * Costs are compared cross-multiplied, and everything in an iteration except the
 * two lookups is arithmetic, not branches: the verifier walks every iteration of
 * every path that reaches the scan, and branches multiply that work.
 * A service with up to SVCXDP_LC_MAX_SCAN slots is scanned whole. A larger one is
 * sampled: a window of SVCXDP_LC_MAX_SCAN consecutive slots at a random start
 * (not wrapping: a modulo here doubled the verifier's work), so every backend can
 * still win and the cost stays bounded; slots near either end fall in fewer
 * windows.
 * Returns a backend id, or INVALID if no slot resolves. */
static __always_inline __u32 lc_select(const struct svc_value *svc)
{
	__u32 zero = 0;
	struct lc_best *best = lc_scratch.lookup(&zero);
	if (!best)
		return SVCXDP_BACKEND_ID_INVALID;
	__u64 alg = svc->algorithm;
	__u32 count = svc->count;
	/* Per-algorithm constants and the window, computed without branches: each
	 * branch here would have the verifier walk the whole loop once more. */
	__u64 use_w = nonzero(alg ^ SVCXDP_ALG_LC);
	__u64 k_sed = 1 - nonzero(alg ^ SVCXDP_ALG_SED);
	__u64 k_nq = 1 - nonzero(alg ^ SVCXDP_ALG_NQ);
	__u64 big = (__u64)((__s64)SVCXDP_LC_MAX_SCAN - (__s64)count) >> 63; /* count > MAX */
	__u32 n = count - (__u32)(big * (count - SVCXDP_LC_MAX_SCAN));
	__u32 start = (__u32)(big * (((__u64)bpf_get_prandom_u32() * (count - n + 1)) >> 32));
	/* Worse than any backend: counts are < 2^31, weights < 2^16. A weight-0
	 * backend (never in a slot) would cost infinity and never win. */
	best->conns = 1ULL << 32;
	best->weight = 1;
	best->id = SVCXDP_BACKEND_ID_INVALID;
	struct slot_key key = {};
	key.svc_id = svc->svc_id;

	for (__u32 i = 1; i <= SVCXDP_LC_MAX_SCAN; i++) {
		/* Hide i from clang, or it merges both exits into `i == min(n, MAX)`,
		 * a bound the verifier cannot see. */
		asm volatile("" : "+r"(i));
		if (i > n)
			break;
		key.slot = start + i;
		__u32 *idp = slots.lookup(&key);
		if (!idp)
			continue;
		__u32 id = *idp;
		struct backend *b = backends.lookup(&id);
		if (!b)
			continue;
		__u64 c = conns_of(id);
		c += k_sed + k_nq * nonzero(c);
		__u64 w = use_w * b->weight + (1 - use_w);
		/* c/w < best: both products < 2^49, so the sign of the difference is
		 * the comparison. */
		__u64 lt = (c * best->weight - best->conns * w) >> 63;
		__u64 mask = 0 - lt;
		best->id ^= (best->id ^ id) & (__u32)mask;
		best->conns ^= (best->conns ^ c) & mask;
		best->weight ^= (best->weight ^ w) & mask;
	}
	return best->id;
}

#endif /* SVCXDP_LC_H */
