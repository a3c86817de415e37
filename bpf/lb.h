/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * lb.h — the one backend choice for a new flow, shared by every program type:
 * the XDP program (per new flow of a packet) and the cgroup socket hooks (per
 * connect() or unconnected sendmsg(), sock.h). Both read the same maps through
 * the same code, so ClientIP affinity and every algorithm behave alike whichever
 * path a client takes (Cilium's lb.h plays this part for its tc, XDP and socket
 * programs).
 */
#ifndef SVCXDP_LB_H
#define SVCXDP_LB_H

#include "maps.h"
#include "select.h"
#include "affinity.h"

/* Copy the service entry of `sk` into `out`, once: 1 when found, 0 when there is
 * none, -1 when the element read held another key. The kernel reuses a replaced or
 * deleted hash element at once (preallocated or not: tests/packet/test_map_reuse.py),
 * so the element a lookup returned may hold another frontend's value by the time it
 * is read; the copy is used only if it names our key, and every later read of the
 * packet uses the copy. */
static __always_inline int svc_read_once(struct svc_key *sk, struct svc_value *out)
{
	struct svc_value *p = services.lookup(sk);
	if (!p)
		return 0;
	__builtin_memcpy(out, p, sizeof(*out));
	if (out->key_vip == sk->vip && out->key_port == sk->port &&
	    out->key_proto == sk->proto && out->key_scope == sk->scope)
		return 1;
	return -1;
}

/* svc_read_once, read again when it found nothing usable while the writer was
 * replacing entries (maps.h writer_replacing: a lookup racing its own key's replacement
 * can miss it), twice more at most: a second look can meet the next replacement of the
 * same key. Kept as a cheap guard, not on proof: under a test child that rewrites one
 * 16-entry map back to back (tests/packet/test_map_reuse.py, a CPU hog beside it), one
 * batch of 150 runs per variant, 180 million lookups each, missed 1 with one more look
 * and none with two, no measurable difference; the second extra look costs ~200
 * verified instructions of the XDP entry. */
static __always_inline int svc_read(struct svc_key *sk, struct svc_value *out)
{
	int found = svc_read_once(sk, out);
	if (found <= 0 && writer_replacing()) {
		found = svc_read_once(sk, out);
		if (found <= 0)
			found = svc_read_once(sk, out);
	}
	return found;
}

/* What lb_pick() chose: the backend id, and whether it was freshly selected (not
 * the client's affinity entry), so lb_remember() records it once the flow exists. */
struct lb_choice {
	__u32 id;
	int fresh;
};

/* The backend of a new flow of `svc` whose forward tuple is `k` (k->src is the
 * client ClientIP affinity keys by): the client's live affinity entry, else the
 * service's algorithm. NULL when the chosen slot holds no live backend. */
static __always_inline struct backend *lb_pick(const struct svc_value *svc,
					       const struct ct_key *k, __u64 now,
					       struct lb_choice *c, struct events *ev)
{
	__u32 backend_id = SVCXDP_BACKEND_ID_INVALID;
	if (svc->flags & SVCXDP_SVC_F_AFFINITY)
		backend_id = affinity_get(svc, k->src, now);
	c->fresh = backend_id == SVCXDP_BACKEND_ID_INVALID;
	if (c->fresh)
		backend_id = select_backend(svc, k, ev);
	c->id = backend_id;
	struct backend *b = backends.lookup(&backend_id);
	/* The backend must belong to this service: a slot or Maglev element read while
	 * the writer replaced it may have been reused for another service's. */
	if (!b || b->state == SVCXDP_BACKEND_UNUSED || backend_id == SVCXDP_BACKEND_ID_INVALID ||
	    b->svc_id != svc->svc_id)
		return NULL;
	return b;
}

/* A fresh selection of an affinity service becomes the client's entry. Called once
 * the flow is really the client's (the XDP path: after its conntrack entry won). */
static __always_inline void lb_remember(const struct svc_value *svc, const struct ct_key *k,
					const struct lb_choice *c, __u64 now)
{
	if (c->fresh && (svc->flags & SVCXDP_SVC_F_AFFINITY))
		affinity_put(svc, k->src, c->id, now);
}

/* A new flow went to backend `id` (both paths count it once the flow is theirs), in
 * this CPU's row of backend_stats: no other CPU writes it (a per-CPU array's own rule). */
static __always_inline void lb_count_new(__u32 id)
{
	__u32 at = bpf_get_smp_processor_id() * SVCXDP_MAX_BACKENDS + id;
	struct backend_stats *s;

	if (id >= SVCXDP_MAX_BACKENDS)   /* not another CPU's row */
		return;
	s = backend_stats.lookup(&at);
	if (s)
		s->new_flows += 1;
}

#endif /* SVCXDP_LB_H */
