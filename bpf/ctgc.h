/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * ctgc.h — idle-flow garbage collection of conntrack, ahead of need.
 *
 * conntrack is an LRU map: nothing else removes an entry whose flow
 * went idle or closed, so on a busy node they fill up with dead flows and every new flow's insert
 * then pays an eviction (the LRU refills its free list by evicting up to 128 cold
 * entries at a time: the 50-80 us calls of bench/results/datapath-notes.md). The agent
 * walks the table (controlplane/dataplane/ctgc.py) and hands the keys it judged
 * expired to this program through BPF_PROG_TEST_RUN; the program judges each entry
 * again as it is now and deletes it, so freed elements go back to the LRU's free list
 * and new flows find free nodes instead of evicting. (The unconfirmed tables are
 * arrays of sets whose new flows take their set's next slot in turn at no extra cost:
 * nothing to sweep there, conntrack.h.)
 *
 * An entry is removed only when every lookup the datapath could make would find it
 * dead anyway:
 *  - it is idle past its timeout (ct_timeout_ns) by more than SVCXDP_CT_GC_GRACE_S —
 *    a CPU that judged it alive a moment before our clock read and refreshes it now
 *    (ct_touch) left it far younger than that;
 *  - a reply entry (DIR_REPLY) or a SNAT reply entry (DIR_SNAT, the holder of a SNAT
 *    port) stays while its flow's forward entry lives, in any table: a one-way
 *    flow's replies never refresh it, and the datapath keeps the port by the forward
 *    entry (nodeport.h, np_snat_alloc/np_snat_reply);
 *  - a forward entry that still holds one of its backend's connection counts gives it
 *    back first (ct_uncount, lc.h), as the datapath does when it meets an expired flow.
 * Removing a SNAT reply entry frees its port, as the datapath already treats a dead
 * one; removing a forward entry leaves its reply entries to their own judgement.
 *
 * Order matters for what follows: deleted elements go to the head of the LRU's global
 * free list, and each CPU refills 128 at a time from there. Deleted in hash order (as
 * a walk finds them) they are scattered over the whole map, and every later insert and
 * refill touches cold lines on as many pages; deleted in address order they come back
 * in memory order, as a fresh map hands them out (bench/results/datapath-notes.md §6:
 * new flows after a purge 1.50x a fresh map's mean in hash order, 0.99x in address
 * order). So the agent first asks for the dead entries' addresses (OP_LOCATE), sorts,
 * and has them deleted in that order (OP_DELETE, judged again).
 *
 * The datapath never revives an expired entry in place: it replaces it with a new
 * element (ct_create, ct_confirm_entry). What the judgement cannot exclude is a new
 * flow on the very same tuple replacing the entry between this program's lookup and
 * its delete (a few hundred nanoseconds, on a tuple idle for a whole timeout); the
 * map offers no compare-and-delete. docs/architecture.md (conntrack) says what that
 * costs.
 */
#ifndef SVCXDP_CTGC_H
#define SVCXDP_CTGC_H

#include "maps.h"
#include "conntrack.h"

#define CT_GC_GRACE_NS ((__s64)SVCXDP_CT_GC_GRACE_S * (__s64)SVCXDP_NSEC_PER_SEC)

static __always_inline int ct_gc_expired(const struct ct_value *v, __u64 now, __u8 proto)
{
	return ct_idle_ns(v, now) > (__s64)ct_timeout_ns(proto, v->flags) + CT_GC_GRACE_NS;
}

/* Does the tuple's forward entry live, confirmed or not? */
static __always_inline int ct_gc_forward_live(struct ct_key *fk, __u64 now)
{
	struct ct_value *f = conntrack.lookup(fk);
	if (f && !ct_gc_expired(f, now, fk->proto))
		return 1;
	struct ct_value buf;
	int copied;
	f = ctu_lookup_any(fk, &buf, &copied);
	return f && !ct_gc_expired(f, now, fk->proto);
}

/* Is an expired entry still needed by its flow's forward entry? */
static __always_inline int ct_gc_needed(const struct ct_key *k, const struct ct_value *v, __u64 now)
{
	if (k->dir == SVCXDP_CT_DIR_FORWARD)
		return 0;
	struct ct_key fk;
	if (k->dir == SVCXDP_CT_DIR_REPLY)  /* backend -> client; holds the frontend */
		ct_key_set(&fk, k->dst, v->nat_ip, k->dport, v->nat_port, k->proto,
			   SVCXDP_CT_DIR_FORWARD);
	else  /* SNAT: backend -> node:port; holds the frontend and the client */
		ct_key_set(&fk, v->peer_ip, v->nat_ip, v->peer_port, v->nat_port, k->proto,
			   SVCXDP_CT_DIR_FORWARD);
	return ct_gc_forward_live(&fk, now);
}

/* Judge one entry and remove it if dead: 1 deleted, 0 kept, -1 not there (any more).
 * With `locate`, nothing is removed: *where gets the dead entry's element address. */
static __always_inline int ct_gc_one(struct ct_key *k, __u32 table, __u64 now, int locate,
				     __u64 *where)
{
	struct ct_value *v;
	if (table == SVCXDP_CT_GC_CONFIRMED)
		v = conntrack.lookup(k);
	else
		return -1;   /* (the only table swept) */
	if (!v)
		return -1;
	if (!ct_gc_expired(v, now, k->proto) || ct_gc_needed(k, v, now))
		return 0;
	if (locate) {
		*where = (__u64)v;   /* an address for ordering only (root: pointer leaks allowed) */
		return -1;
	}
	if (k->dir == SVCXDP_CT_DIR_FORWARD)
		ct_uncount(v);
	return conntrack.delete(k) == 0 ? 1 : -1;
}

static __always_inline void counters_add(__u32 idx, __u64 n)
{
	__u64 *v = counters.lookup(&idx);
	if (v)
		*v += n;
}

/* The GC entry point, run by the agent with BPF_PROG_TEST_RUN only (never attached):
 * the call's data is a struct ct_gc_request and its keys (svcxdp.h); the counts are
 * written back into the request and added to the counters. */
int svcxdp_ct_gc(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ct_gc_request *req = data;
	if ((void *)(req + 1) > end)
		return XDP_ABORTED;
	__u32 count = req->count;
	__u32 table = req->table;
	int locate = req->op == SVCXDP_CT_GC_OP_LOCATE;
	__u64 now = bpf_ktime_get_coarse_ns();
	/* The counts live in the request (packet memory, whose values the verifier does not
	 * track): counted in registers, every iteration's outcomes multiplied the states. */
	req->deleted = 0;
	req->kept = 0;
	struct ct_key *keys = (void *)(req + 1);
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < SVCXDP_CT_GC_BATCH; i++) {
		/* Hide i from clang, or it turns the bound checks into a trip count worked
		 * out from the packet's length, which the verifier cannot follow (lc.h). */
		asm volatile("" : "+r"(i));
		if (i >= count)
			break;
		struct ct_key *pk = keys + i;
		if ((void *)(pk + 1) > end)
			break;
		struct ct_key k = *pk;
		__u64 where = 0;
		int r = ct_gc_one(&k, table, now, locate, &where);
		if (locate)
			*(__u64 *)pk = where;
		if (r == 1)
			req->deleted += 1;
		else if (r == 0)
			req->kept += 1;
	}
	counters_add(SVCXDP_CNT_CT_GC_DELETED, req->deleted);
	counters_add(SVCXDP_CNT_CT_GC_KEPT, req->kept);
	return XDP_PASS;
}

#endif /* SVCXDP_CTGC_H */
