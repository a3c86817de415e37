/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * select.h — choosing a backend for a new flow, per the service's algorithm.
 * A service's backends sit in slots 1..count (for wrr: a weighted cycle of them);
 * random, rr, wrr, sh and dh only decide which slot, Maglev reads its own table,
 * and the counted family compares the slots' backends (lc.h).
 */
#ifndef SVCXDP_SELECT_H
#define SVCXDP_SELECT_H

#include "maps.h"
#include "maglev.h"
#include "lc.h"

/* Multiply-shift maps a uniform 32-bit value onto [0, n) without a division.
 * controlplane/dataplane/predict.py computes the same. */
static __always_inline __u32 scale_to(__u32 x, __u32 n)
{
	return (__u32)(((__u64)x * n) >> 32);
}

static __always_inline __u32 rr_next(const struct svc_value *svc)
{
	__u32 id = svc->svc_id;
	struct rr_state *st = rr_state.lookup(&id);
	if (!st)
		return 0;
	/* One shared cursor: the order is exact even across CPUs. */
	bpf_spin_lock(&st->lock);
	__u32 n = st->next++;
	bpf_spin_unlock(&st->lock);
	return n % svc->count + 1;
}

/* Whether backend `id` serves service `svc_id` (lb_pick checks it too, in the end). */
static __always_inline int backend_serves(__u32 id, __u32 svc_id)
{
	struct backend *b = backends.lookup(&id);
	return b && b->svc_id == svc_id;
}

/* The backend id in slot `slot` of service `svc_id`. Read again while the writer is
 * replacing entries (maps.h writer_replacing) when the lookup missed or the id read
 * serves another service: the element may have been reused at once for another key. */
static __always_inline __u32 slot_backend(__u32 svc_id, __u32 slot)
{
	struct slot_key k = {};
	k.svc_id = svc_id;
	k.slot = slot;
	__u32 *id = slots.lookup(&k);
	__u32 bid = id ? *id : SVCXDP_BACKEND_ID_INVALID;
	if (!backend_serves(bid, svc_id) && writer_replacing()) {
		id = slots.lookup(&k);
		bid = id ? *id : SVCXDP_BACKEND_ID_INVALID;
	}
	return bid;
}

/* Source hash: the client address (with the service's port and protocol, fixed per
 * service), so every connection of one client meets the same backend. Destination
 * hash: the address the client addressed, IPVS's dh. */
static __always_inline __u32 addr_hash(__be32 addr, const struct ct_key *k)
{
	return svcxdp_flow_hash_affinity(addr, k->dport, k->proto, SVCXDP_FLOW_HASH_SEED);
}

/* `k` is the new flow's forward conntrack key (the packet's tuple, before DNAT).
 * Returns a backend id, or INVALID when the chosen slot holds none. */
static __always_inline __u32 select_backend(const struct svc_value *svc, const struct ct_key *k,
					    struct events *ev)
{
	__u8 alg = svc->algorithm;
	__u32 count = svc->count;
	__u32 slot;

	if (alg == SVCXDP_ALG_MAGLEV) {
		__u32 h = maglev_flow_hash(svc, k);
		__u32 id = maglev_lookup(svc, h);
		if (id != SVCXDP_BACKEND_ID_INVALID)
			return id;
		ev->extra = SVCXDP_CNT_MAGLEV_FALLBACK;
		slot = scale_to(h, count) + 1;
	} else if (alg_counts_conns(alg)) {
		return lc_select(svc);
	} else if (alg == SVCXDP_ALG_RR || alg == SVCXDP_ALG_WRR) {
		slot = rr_next(svc);
	} else if (alg == SVCXDP_ALG_SH) {
		slot = scale_to(addr_hash(k->src, k), count) + 1;
	} else if (alg == SVCXDP_ALG_DH) {
		slot = scale_to(addr_hash(k->dst, k), count) + 1;
	} else {
		slot = scale_to(bpf_get_prandom_u32(), count) + 1;
	}
	return slot_backend(svc->svc_id, slot);
}

#endif /* SVCXDP_SELECT_H */
