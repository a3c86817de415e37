/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * maglev.h — consistent hashing: the flow hash (csrc/flowhash.h, the same C the
 * control plane predicts with) indexes the service's own table of M backend ids.
 * With ClientIP affinity the source port is left out, so one client's connections
 * share an entry while the table is unchanged.
 */
#ifndef SVCXDP_MAGLEV_H
#define SVCXDP_MAGLEV_H

#include "maps.h"
#include "flowhash.h"

#ifndef SVCXDP_FLOW_HASH_SEED
#define SVCXDP_FLOW_HASH_SEED SVCXDP_FLOW_HASH_SEED_DEFAULT
#endif

static __always_inline __u32 maglev_flow_hash(const struct svc_value *svc, const struct ct_key *k)
{
	if (svc->flags & SVCXDP_SVC_F_AFFINITY)
		return svcxdp_flow_hash_affinity(k->src, k->dport, k->proto, SVCXDP_FLOW_HASH_SEED);
	return svcxdp_flow_hash(k->src, k->sport, k->dport, k->proto, SVCXDP_FLOW_HASH_SEED);
}

/* The table's backend id for this flow, or INVALID when the service has no table
 * or the index is beyond it (its size M is being changed: the writer swaps the
 * table before it rewrites M in the service entry). The caller then falls back to
 * hashing over the slots, so a resize never drops a packet. */
static __always_inline __u32 maglev_lookup(const struct svc_value *svc, __u32 hash)
{
	__u32 m = svc->table_size;
	if (m == 0)
		return SVCXDP_BACKEND_ID_INVALID;
	__u32 svc_id = svc->svc_id;
	void *table = maglev.lookup(&svc_id);
	if (!table && writer_replacing())   /* a table being swapped (maps.h) */
		table = maglev.lookup(&svc_id);
	if (!table)
		return SVCXDP_BACKEND_ID_INVALID;
	__u32 idx = svcxdp_maglev_slot(hash, m);
	__u32 *id = bpf_map_lookup_elem(table, &idx);
	return id ? *id : SVCXDP_BACKEND_ID_INVALID;
}

#endif /* SVCXDP_MAGLEV_H */
