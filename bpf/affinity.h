/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * affinity.h — sessionAffinity: ClientIP.
 *
 * A new flow of an affinity service first asks the `affinity` map for the client's
 * backend on this frontend. The entry wins when it is
 *   - of the service's current ClientIP period (gen == svc_value.affinity_gen: a
 *     switch to None and back starts a new period, so old entries are dropped
 *     without a scan of the map),
 *   - not idle longer than the service's timeout, read from svc_value now (so a
 *     changed timeout applies to existing entries), and
 *   - pointing at a member of the match set: a backend the service would give a
 *     new flow to (affinity_member()).
 * Otherwise the service's algorithm selects as usual and the entry is rewritten.
 *
 * Timer: refreshed by each new flow that uses the entry, as kube-proxy's `recent`
 * match (only a connection's first packet traverses nat) and nftables' set
 * update do; packets of established flows never touch the map. Stickiness ends
 * `timeout` after the client's last new connection, whatever its open
 * connections do (docs/affinity.md has the measurement behind that choice).
 *
 * Eviction: LRU reclaims silently. Every insert of a new key is counted
 * (SVCXDP_CNT_AFFINITY_NEW); nothing but LRU removes entries (the writer never
 * deletes them), so user space reports evictions as inserts minus the entries
 * present.
 */
#ifndef SVCXDP_AFFINITY_H
#define SVCXDP_AFFINITY_H

#include "maps.h"
#include "conntrack.h"

/* The match set, read from the backends array (one entry per service and
 * address): the backend still belongs to this frontend, has weight, and is ready
 * — or terminating while nothing is ready (then the slots hold the terminating
 * ones). Exactly the backends the writer puts in the service's slots. */
static __always_inline int affinity_member(const struct svc_value *svc, __u32 id)
{
	struct backend *b = backends.lookup(&id);
	if (!b || b->svc_id != svc->svc_id || b->weight == 0)
		return 0;
	if (b->state == SVCXDP_BACKEND_ACTIVE)
		return 1;
	return b->state == SVCXDP_BACKEND_TERMINATING &&
	       (svc->flags & SVCXDP_SVC_F_TERMINATING_ONLY);
}

/* The client's backend, refreshed to `now`; INVALID when there is none to use.
 * The outcome is counted here, not through struct events: every miss then leaves
 * the same state behind, so the verifier walks the selection (lc.h's loop) once
 * for all of them instead of once per distinct event value. */
static __always_inline __u32 affinity_get(const struct svc_value *svc, __be32 client, __u64 now)
{
	struct affinity_key k = {};
	k.svc_id = svc->svc_id;
	k.client = client;
	__u32 id = SVCXDP_BACKEND_ID_INVALID;
	__u32 event = SVCXDP_CNT_AFFINITY_NEW;
	struct affinity_value *v = affinity.lookup(&k);
	if (v) {
		/* Signed: another CPU may have stored a `now` a little later than ours. */
		__s64 idle = (__s64)(now - v->last_used);
		event = SVCXDP_CNT_AFFINITY_EXPIRED;
		if (v->gen == svc->affinity_gen &&
		    idle <= (__s64)((__u64)svc->affinity_timeout * SVCXDP_NSEC_PER_SEC)) {
			event = SVCXDP_CNT_AFFINITY_STALE;
			if (affinity_member(svc, v->backend_id)) {
				id = v->backend_id;
				v->last_used = now;
				event = SVCXDP_CNT_AFFINITY_HIT;
			}
		}
	}
	counters_bump(event);
	return id;
}

/* Remember the backend a fresh selection gave this client. */
static __always_inline void affinity_put(const struct svc_value *svc, __be32 client,
					 __u32 backend_id, __u64 now)
{
	struct affinity_key k = {};
	k.svc_id = svc->svc_id;
	k.client = client;
	struct affinity_value v = {};
	v.last_used = now;
	v.backend_id = backend_id;
	v.gen = svc->affinity_gen;
	affinity.update(&k, &v);
}

#endif /* SVCXDP_AFFINITY_H */
