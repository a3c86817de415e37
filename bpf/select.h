/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * select.h — choosing a backend for a new flow. A service's backends sit in slots
 * 1..count; each algorithm only decides which slot.
 */
#ifndef SVCXDP_SELECT_H
#define SVCXDP_SELECT_H

#include "maps.h"

static __always_inline __u32 pick_slot(const struct svc_value *svc)
{
	__u32 count = svc->count;
	if (svc->algorithm == SVCXDP_ALG_RR) {
		__u32 id = svc->svc_id;
		struct rr_state *st = rr_state.lookup(&id);
		if (!st)
			return 0;
		/* One shared cursor: the order is exact even across CPUs. */
		bpf_spin_lock(&st->lock);
		__u32 n = st->next++;
		bpf_spin_unlock(&st->lock);
		return n % count + 1;
	}
	/* Random: multiply-shift maps a 32-bit random number onto [0, count)
	 * without a division. */
	__u64 r = bpf_get_prandom_u32();
	return (__u32)((r * count) >> 32) + 1;
}

static __always_inline __u32 select_backend(const struct svc_value *svc)
{
	struct slot_key k = {};
	k.svc_id = svc->svc_id;
	k.slot = pick_slot(svc);
	__u32 *id = slots.lookup(&k);
	return id ? *id : SVCXDP_BACKEND_ID_INVALID;
}

#endif /* SVCXDP_SELECT_H */
