/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * conntrack.h — flow state: idle timeouts on a coarse monotonic clock and TCP close
 * tracking. An entry is refreshed at most once a second, so an established flow
 * costs a compare, not a store, on most packets.
 *
 * Two kinds of table, one policy against floods: a flow's first packet records it
 * in an unconfirmed table; its second forward packet (for TCP: one with ACK and
 * without SYN, i.e. the handshake's last packet or later) moves it to conntrack
 * (ct_confirm). A flood of spoofed one-packet flows — a SYN flood, retransmitted
 * SYNs included, or single datagrams — can then only evict other unconfirmed
 * flows, never an established one. Readers look in conntrack, then in the
 * unconfirmed tables (ct_lookup). A flood that sends a second packet for each
 * spoofed tuple (a blind SYN then ACK) still confirms its flows: the handshake's
 * ACK number is not checked.
 *
 * The unconfirmed table is the entry point's (ctu_*): ct_unconfirmed_pod for flows
 * from pods, small and cache-resident, since their handshakes complete within an
 * in-cluster round trip; ct_unconfirmed for flows from outside, large, so a far
 * client's handshake outlives a flood (svcxdp.h). Both are arrays of sets (below).
 * A flow's forward packets always
 * come in through the same entry point, so its own lookups name the table; a reply
 * may come in through the other one (a NodePort flow to a local pod answers from
 * the pod's side), so reply-side lookups look in both.
 *
 * A bare TCP SYN (SYN without ACK) starts a connection, so it does not look in
 * conntrack (handle_service): that miss, a cold bucket line in a table of a million
 * entries, was about a third of a new flow's cost. A tuple's older connection may
 * then still sit in conntrack (closed, expired, or never seen to close) while the
 * new one waits in ct_unconfirmed. Rules that keep them apart: a confirmed entry
 * that is not current (expired or closed) yields to an unconfirmed one (ct_lookup,
 * ct_current); a reply that the confirmed entry's backend did not send is matched
 * in ct_unconfirmed too (ct_match_reply); confirming overwrites a confirmed entry
 * that is not current (ct_confirm_entry). A current confirmed entry is never
 * replaced from ct_unconfirmed: a spoofed SYN on an established tuple still breaks
 * nothing.
 */
#ifndef SVCXDP_CONNTRACK_H
#define SVCXDP_CONNTRACK_H

#include "flowhash.h"
#include "maps.h"
#include "lc.h"

#ifndef SVCXDP_TCP_TIMEOUT_S
#define SVCXDP_TCP_TIMEOUT_S SVCXDP_DEFAULT_TCP_TIMEOUT_S
#endif
#ifndef SVCXDP_TCP_CLOSE_TIMEOUT_S
#define SVCXDP_TCP_CLOSE_TIMEOUT_S SVCXDP_DEFAULT_TCP_CLOSE_TIMEOUT_S
#endif
#ifndef SVCXDP_TCP_HALF_CLOSE_TIMEOUT_S
#define SVCXDP_TCP_HALF_CLOSE_TIMEOUT_S SVCXDP_DEFAULT_TCP_HALF_CLOSE_TIMEOUT_S
#endif
#ifndef SVCXDP_UDP_TIMEOUT_S
#define SVCXDP_UDP_TIMEOUT_S SVCXDP_DEFAULT_UDP_TIMEOUT_S
#endif

#define SVCXDP_NSEC_PER_SEC 1000000000ULL
#define CT_REFRESH_NS SVCXDP_NSEC_PER_SEC

/* TCP flag bits as they sit in byte 13 of the TCP header. */
#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/* Which unconfirmed table a lookup's copy came from (`copied`): write changes back there. */
#define CT_COPY_POD 1
#define CT_COPY_EXT 2

/* Where a flow's entry was found (ct_create's `dead`). */
#define CT_IN_NONE 0
#define CT_IN_UNCONFIRMED 1
#define CT_IN_CONFIRMED 2

/* Half-closed: one side's FIN only (svcxdp.h, SVCXDP_CT_F_FIN_CLIENT). Its other side
 * may still send after a pause, so it keeps the half-close timeout (an hour: Linux
 * conntrack keeps such a flow in CLOSE_WAIT, which kube-proxy sets to an hour) and
 * stays its tuple's connection (ct_current: a SYN does not take it over, as netfilter
 * ignores one in CLOSE_WAIT). Closed: FIN or RST seen, and not half-closed. */
static __always_inline int ct_half_closed(__u8 flags)
{
	__u8 fins = flags & SVCXDP_CT_F_FIN_BOTH;
	return (flags & SVCXDP_CT_F_CLOSING) &&
	       (fins == SVCXDP_CT_F_FIN_CLIENT || fins == SVCXDP_CT_F_FIN_BACKEND);
}

static __always_inline int ct_closed(__u8 flags)
{
	return (flags & SVCXDP_CT_F_CLOSING) && !ct_half_closed(flags);
}

static __always_inline __u64 ct_timeout_ns(__u8 proto, __u8 flags)
{
	if (proto == IPPROTO_TCP) {
		if (ct_half_closed(flags))
			return SVCXDP_TCP_HALF_CLOSE_TIMEOUT_S * SVCXDP_NSEC_PER_SEC;
		if (flags & SVCXDP_CT_F_CLOSING)
			return SVCXDP_TCP_CLOSE_TIMEOUT_S * SVCXDP_NSEC_PER_SEC;
		return SVCXDP_TCP_TIMEOUT_S * SVCXDP_NSEC_PER_SEC;
	}
	return SVCXDP_UDP_TIMEOUT_S * SVCXDP_NSEC_PER_SEC;
}

/* How long the entry has been idle, signed: another CPU may have refreshed it
 * with a `now` a little later than ours, and as unsigned that small negative
 * age would wrap to "idle for centuries" (affinity.h does the same). */
static __always_inline __s64 ct_idle_ns(const struct ct_value *v, __u64 now)
{
	return (__s64)(now - v->last_seen);
}

static __always_inline int ct_alive(const struct ct_value *v, __u64 now, __u8 proto)
{
	return ct_idle_ns(v, now) <= (__s64)ct_timeout_ns(proto, v->flags);
}

/* A bare SYN on a closed flow is a new connection reusing the tuple (not on a
 * half-closed one: ct_half_closed). */
static __always_inline int ct_reopened(const struct ct_value *v, __u8 tcp_flags)
{
	return ct_closed(v->flags) && (tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
}

/* ---- ct_udp_recent: which UDP tuples may have a conntrack entry ----------------
 * A UDP datagram cannot say it is its flow's first, so each one would look in
 * conntrack, and a new flow's miss there is a cold bucket of a table of a million
 * entries (datapath-notes §12: ~230 ns of a UDP first packet's ~650). ct_udp_recent,
 * a byte per tuple hash (64 KiB, which stays in cache), answers "certainly not there"
 * instead: each slot holds the tag of the epoch in which a UDP forward entry hashing
 * to it was last written or refreshed in conntrack (0: never). An epoch is the
 * smallest power of two of nanoseconds not shorter than the UDP timeout (68.7 s for
 * 60 s), so the packet path finds epoch and tag with a shift and a mask: every UDP
 * packet to a service asks the filter, established ones too, and two divisions were
 * tens of cycles each.
 * Every such write stamps (ct_udp_stamp): an entry's last_seen is set only with a
 * stamp at the same `now`. A slot three or more epochs old therefore means every
 * entry hashing to it has been idle longer than the UDP timeout, i.e. expired, and
 * skipping the lookup changes nothing: the packet starts a new flow either way.
 * Why three, not two: two CPUs stamping one slot across an epoch boundary can leave
 * the older epoch (a plain store, no atomic max), at most one behind. Tags count
 * epochs mod SVCXDP_CT_RECENT_TAGS (1..128), so a slot untouched for 128 epochs or
 * more may look recent again: "maybe", which is always safe. Collisions only make
 * "maybe" more common. Only the pod-facing entry point skips (handle_service says
 * why). The loader fills the filter with "maybe" whenever it adopts a conntrack
 * table that outlived the last program (program.py: its stamps may be missing or of
 * another UDP timeout). */
#define CT_UDP_TIMEOUT_NS (SVCXDP_UDP_TIMEOUT_S * SVCXDP_NSEC_PER_SEC)
/* log2 of the epoch: the bits of (timeout - 1), folded by the compiler. */
#define CT_UDP_EPOCH_SHIFT (64 - __builtin_clzll(CT_UDP_TIMEOUT_NS - 1))

static __always_inline __u32 ct_udp_tag(__u64 now)
{
	return ((__u32)(now >> CT_UDP_EPOCH_SHIFT) & (SVCXDP_CT_RECENT_TAGS - 1)) + 1;
}

/* The tuple's slot (the direction and protocol are implied: UDP, forward): the hash in
 * csrc/flowhash.h, which user space calls too (udprecent.py). */
static __always_inline __u32 ct_udp_slot(const struct ct_key *k)
{
	return svcxdp_udp_recent_hash(k->src, k->dst, k->sport, k->dport) &
	       (SVCXDP_CT_RECENT_SLOTS - 1);
}

static __always_inline __u8 *ct_udp_tag_of(const struct ct_key *k)
{
	__u32 zero = 0;
	struct ct_udp_recent *r = ct_udp_recent.lookup(&zero);
	if (!r)
		return NULL;
	return &r->tag[ct_udp_slot(k)];
}

static __always_inline void ct_udp_stamp(const struct ct_key *k, __u64 now)
{
	if (k->proto != IPPROTO_UDP || k->dir != SVCXDP_CT_DIR_FORWARD)
		return;
	__u8 *t = ct_udp_tag_of(k);
	__u8 tag = ct_udp_tag(now);
	if (t && *t != tag)   /* once per slot and epoch: the line stays shared */
		*t = tag;
}

/* Certainly no live conntrack entry for this UDP forward tuple (see above). */
static __always_inline int ct_udp_absent(const struct ct_key *k, __u64 now)
{
	__u8 *t = ct_udp_tag_of(k);
	if (!t)
		return 0;
	if (*t == 0)
		return 1;
	__u32 age = (ct_udp_tag(now) - *t) & (SVCXDP_CT_RECENT_TAGS - 1);
	return age >= SVCXDP_CT_RECENT_SURE_AGE;
}

/* What ct_touch and ct_uncount may change in an entry. A copy from an unconfirmed table goes
 * back (a lock and a hash) only if it changed: once a second, or when a flag moves. */
struct ct_mark {
	__u64 last_seen;
	__u8 flags;
};

static __always_inline struct ct_mark ct_mark_of(const struct ct_value *v)
{
	struct ct_mark m = { .last_seen = v->last_seen, .flags = v->flags };
	return m;
}

static __always_inline int ct_changed(const struct ct_value *v, struct ct_mark was)
{
	return v->last_seen != was.last_seen || v->flags != was.flags;
}

/* The flags a FIN or RST sets on an entry: CLOSING, and on a forward entry which side
 * closed — `fin` is the side this packet came from (SVCXDP_CT_F_FIN_CLIENT or _BACKEND),
 * 0 for a reply or SNAT entry (which sees one side only: closed by it, svcxdp.h). A RST
 * closes both sides. */
static __always_inline __u8 ct_close_flags(__u8 tcp_flags, __u8 fin)
{
	if (tcp_flags & TCPF_RST)
		return SVCXDP_CT_F_CLOSING | (fin ? SVCXDP_CT_F_FIN_BOTH : 0);
	if (tcp_flags & TCPF_FIN)
		return SVCXDP_CT_F_CLOSING | fin;
	return 0;
}

/* Refresh an entry (`k`: its key, for the UDP stamp; `fin`: as ct_close_flags'); returns
 * 1 when this packet starts the close (first FIN/RST). */
static __always_inline int ct_touch(struct ct_value *v, const struct ct_key *k, __u64 now,
				    __u8 tcp_flags, __u8 fin)
{
	if (ct_idle_ns(v, now) > (__s64)CT_REFRESH_NS) {
		v->last_seen = now;
		ct_udp_stamp(k, now);
	}
	int first = 0;
	if (tcp_flags & (TCPF_FIN | TCPF_RST)) {
		first = !(v->flags & SVCXDP_CT_F_CLOSING);
		v->flags |= ct_close_flags(tcp_flags, fin);
	}
	return first;
}

/* Every byte of a conntrack key is a field (no padding), so setting them all makes
 * a key the map can hash. */
static __always_inline void ct_key_set(struct ct_key *k, __be32 src, __be32 dst, __be16 sport,
				       __be16 dport, __u8 proto, __u8 dir)
{
	k->src = src;
	k->dst = dst;
	k->sport = sport;
	k->dport = dport;
	k->proto = proto;
	k->dir = dir;
	k->reserved = 0;
}

/* Is the backend id still the backend the flow was recorded with? The writer
 * hands a removed backend's id to another (service, address), which must not be
 * taken for the old one. (An address removed and re-added to the same service
 * under the same id is the same backend again.) */
static __always_inline int ct_backend_same(const struct ct_value *v, const struct backend *b)
{
	return b->svc_id == v->svc_id && b->ip == v->nat_ip && b->port == v->nat_port;
}

/* Is a confirmed entry still its tuple's connection? One that expired or is closed
 * may have been followed by a new connection on the same tuple, whose bare SYN did
 * not look in conntrack (conntrack.h, top); a half-closed one has not. */
static __always_inline int ct_current(const struct ct_value *v, __u64 now, __u8 proto)
{
	return ct_alive(v, now, proto) && !ct_closed(v->flags);
}

/* May this packet, which no live flow holds, start one? Any UDP datagram; for TCP a
 * SYN, or an ACK without SYN, FIN or RST (a connection picked up mid-stream, as Linux
 * conntrack's loose pickup does after its entry was lost). Anything else (a FIN, a RST,
 * SYN+FIN, a SYN-ACK, no flags) is what netfilter calls INVALID and kube-proxy drops: it
 * must not choose a backend, count as a new flow, move a round-robin cursor or be
 * answered with a reject. */
static __always_inline int ct_may_start(__u8 proto, __u8 tcp_flags)
{
	if (proto != IPPROTO_TCP)
		return 1;
	__u8 f = tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_FIN | TCPF_RST);
	return f == TCPF_SYN || f == TCPF_ACK;
}

/* A bare TCP SYN: the first packet of a connection (conntrack.h, top). */
static __always_inline int ct_bare_syn(__u8 proto, __u8 tcp_flags)
{
	return proto == IPPROTO_TCP && (tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
}

/* ---- the unconfirmed tables: sets, not LRU hashes ---------------------------------
 * ct_unconfirmed_pod and ct_unconfirmed are arrays of struct ct_set (svcxdp.h), each of
 * its own size, both hashed under one seed (`ext` names the table: a constant at every
 * call): a key's entry can only be in the set its hash names, in any of its
 * SVCXDP_CT_SET_WAYS slots. A new flow takes its set's next slot in turn
 * (ctp_slot_for_new), so an insert touches one set's lines whether the table is full or
 * not — an LRU hash full of cold entries evicts them, 128 at a time, which was a third
 * of a pod's UDP new flow and most of a NodePort one (datapath-notes §15, §20). The price
 * is in the flood law: an entry survives SVCXDP_CT_SET_WAYS - 1 later new flows in its
 * set, not max_entries - 1 in the table (a slope, not a cliff; §15, §16), so the table
 * has ways enough that a burst of pending handshakes loses none in practice (8: one in
 * ~10^8 flows of a burst of 2,000).
 * A slot can be given to another flow at any moment by another CPU, so nothing keeps a
 * pointer into it: a read that finds its key copies the entry out under the set's lock
 * (a miss needs no lock: ctp_get), and a change goes back under the lock only if the slot
 * still holds that key (ctp_replace).
 * Readers that may meet a copy say so (`copied`) so that their changes are written back
 * (ct_store). */
static __always_inline struct ct_set *ctp_set(int ext, const struct ct_key *k)
{
	__u32 zero = 0;
	__u32 *seed = ct_set_seed.lookup(&zero);
	if (!seed)
		return NULL;
	__u32 h = svcxdp_ct_set_hash(k->src, k->dst, k->sport, k->dport, k->proto, k->dir, *seed);
	if (ext) {
		__u32 i = h & (SVCXDP_CT_UNCONFIRMED_SIZE / SVCXDP_CT_SET_WAYS - 1);
		return ct_unconfirmed.lookup(&i);
	}
	__u32 i = h & (SVCXDP_CT_UNCONFIRMED_POD_SIZE / SVCXDP_CT_SET_WAYS - 1);
	return ct_unconfirmed_pod.lookup(&i);
}

/* 1 if x != 0, else 0, without a branch: the verifier walks every branch of every
 * inlined copy, and a search that branched per way made the external program, which
 * inlines the reply path's lookups several times, too long to verify with 4 ways. `neg`
 * is hidden from clang, which would turn (x | -x) >> 63 back into a compare. */
static __always_inline __u64 ctp_nz(__u64 x)
{
	__u64 neg = -x;
	asm volatile("" : "+r"(neg));
	return (x | neg) >> 63;
}

/* Bit w set: slot w of s holds k. Under s->lock, or as ctp_get's first look. */
static __always_inline __u32 ctp_match(struct ct_set *s, const struct ct_key *k)
{
	const __u64 *y = (const __u64 *)k;
	__u32 m = 0;
#pragma unroll
	for (int w = 0; w < SVCXDP_CT_SET_WAYS; w++) {
		const __u64 *x = (const __u64 *)&s->slot[w].key;
		m |= (__u32)(1 - ctp_nz((x[0] ^ y[0]) | (x[1] ^ y[1]))) << w;
	}
	return m;
}

/* The index of m's lowest set bit (m != 0, at most 8 bits wide), without a branch. */
static __always_inline __u32 ctp_lowest(__u32 m)
{
	__u64 low = m & -m;
	return (__u32)(ctp_nz(low & 0xAA) | ctp_nz(low & 0xCC) << 1 | ctp_nz(low & 0xF0) << 2) &
	       (SVCXDP_CT_SET_WAYS - 1);
}

/* The slot a new key takes in s: the set's slots in turn, a ring, whether or not a
 * slot is free. An entry therefore outlives exactly SVCXDP_CT_SET_WAYS - 1 later new keys
 * in its set, whatever confirmations freed meanwhile; a slot freed by one is reused when
 * the ring comes round. (Free slots first, lowest or from the cursor on, breaks that:
 * a key that takes a free slot behind the cursor leaves newer entries next in line —
 * datapath-notes §16.) Under s->lock. */
static __always_inline __u32 ctp_slot_for_new(struct ct_set *s)
{
	__u32 w = s->next & (SVCXDP_CT_SET_WAYS - 1);
	s->next = w + 1;
	return w;
}

/* Copy k's entry into *out; 1 if there is one.
 * A miss is decided without the lock: most lookups here are new flows' (a miss), and
 * the lock is a helper call that saves and restores interrupts. A racing writer can
 * only put k in (this packet came first, as if it had) or take it out (evicted or
 * confirmed: a miss is right), and a torn read of a slot being rewritten can only
 * look like k by chance, which the locked search below settles. */
static __always_inline int ctp_get(int ext, const struct ct_key *k, struct ct_value *out)
{
	struct ct_set *s = ctp_set(ext, k);
	if (!s || !ctp_match(s, k))
		return 0;
	bpf_spin_lock(&s->lock);
	__u32 m = ctp_match(s, k);
	if (m)
		*out = s->slot[ctp_lowest(m)].value;
	bpf_spin_unlock(&s->lock);
	return m != 0;
}

/* Write k's entry, BPF_NOEXIST (-EEXIST if k has one) or BPF_ANY: a new entry takes the
 * slot ctp_slot_for_new gives. 0 when written. */
static __always_inline long ctp_put(int ext, const struct ct_key *k, const struct ct_value *v, __u64 mode)
{
	struct ct_set *s = ctp_set(ext, k);
	if (!s)
		return -2;   /* -ENOENT: cannot happen (index masked, array map) */
	long err = 0;
	bpf_spin_lock(&s->lock);
	__u32 m = ctp_match(s, k);
	if (m && mode == BPF_NOEXIST) {
		err = -17;   /* -EEXIST */
	} else {
		__u32 w = m ? ctp_lowest(m) : ctp_slot_for_new(s);
		s->slot[w].key = *k;
		s->slot[w].value = *v;
	}
	bpf_spin_unlock(&s->lock);
	return err;
}

/* Write a changed copy back over k's entry, if k still has one: a change that comes
 * back after the slot went to another flow, or after the flow was confirmed, is
 * dropped. */
static __always_inline void ctp_replace(int ext, const struct ct_key *k, const struct ct_value *v)
{
	struct ct_set *s = ctp_set(ext, k);
	if (!s)
		return;
	bpf_spin_lock(&s->lock);
	__u32 m = ctp_match(s, k);
	if (m)
		s->slot[ctp_lowest(m)].value = *v;
	bpf_spin_unlock(&s->lock);
}

static __always_inline long ctp_delete(int ext, const struct ct_key *k)
{
	struct ct_set *s = ctp_set(ext, k);
	if (!s)
		return -2;
	long err = -2;
	bpf_spin_lock(&s->lock);
	__u32 m = ctp_match(s, k);
	if (m) {
		__builtin_memset(&s->slot[ctp_lowest(m)].key, 0, sizeof(struct ct_key));
		err = 0;
	}
	bpf_spin_unlock(&s->lock);
	return err;
}

/* The unconfirmed table of an entry point (conntrack.h, top). `external` is a
 * constant at each call, so each program keeps only its own table's calls. Entries are
 * copies into *buf (above), written back with ctu_store. */
static __always_inline struct ct_value *ctu_lookup(int external, struct ct_key *k,
						   struct ct_value *buf)
{
	return ctp_get(external, k, buf) ? buf : NULL;
}

/* Insert only if the key has no entry (BPF_NOEXIST); 0 when inserted. */
static __always_inline long ctu_insert(int external, struct ct_key *k, struct ct_value *v)
{
	return ctp_put(external, k, v, BPF_NOEXIST);
}

static __always_inline long ctu_update(int external, struct ct_key *k, struct ct_value *v)
{
	return ctp_put(external, k, v, BPF_ANY);
}

static __always_inline long ctu_delete(int external, struct ct_key *k)
{
	return ctp_delete(external, k);
}

/* Write back a change to an entry ctu_lookup gave (a copy). */
static __always_inline void ctu_store(int external, struct ct_key *k, struct ct_value *v)
{
	ctp_replace(external, k, v);
}

/* Either unconfirmed table, for lookups that do not know the flow's entry point (a
 * reply): the pods' first, the small one, which the most new flows use. *copied: which
 * table the copy in *buf came from, CT_COPY_* (write changes back with ct_store). */
static __always_inline struct ct_value *ctu_lookup_any(struct ct_key *k, struct ct_value *buf,
						       int *copied)
{
	*copied = CT_COPY_POD;
	if (ctu_lookup(0, k, buf))
		return buf;
	*copied = CT_COPY_EXT;
	if (ctu_lookup(1, k, buf))
		return buf;
	*copied = 0;
	return NULL;
}

/* A flow's entry, confirmed or not: the confirmed one while it is current, else an
 * unconfirmed one (a newer connection on the tuple) if there is one. `pods` (a constant
 * at each call) says whether the key may be in the pods' table; *copied as
 * ctu_lookup_any's. */
static __always_inline struct ct_value *ct_lookup_in(struct ct_key *k, int pods,
						     struct ct_value *buf, int *copied)
{
	*copied = 0;
	struct ct_value *v = conntrack.lookup(k);
	/* Opaque to clang: else it computes a field's address before the null check,
	 * which the verifier refuses. */
	asm volatile("" : "+r"(v));
	if (v && ct_current(v, bpf_ktime_get_coarse_ns(), k->proto))
		return v;
	struct ct_value *u;
	if (pods) {
		u = ctu_lookup_any(k, buf, copied);
	} else {
		*copied = CT_COPY_EXT;
		u = ctu_lookup(1, k, buf);
	}
	if (!u) {
		*copied = 0;
		u = v;
	}
	asm volatile("" : "+r"(u));
	return u;
}

static __always_inline struct ct_value *ct_lookup(struct ct_key *k, struct ct_value *buf,
						  int *copied)
{
	return ct_lookup_in(k, 1, buf, copied);
}

/* ct_lookup for a key only conntrack and ct_unconfirmed can hold: a SNAT entry, or an
 * external client's flow (nodeport.h, icmp.h) — never the pods' table's, whose search
 * the verifier would walk on every path here. *copied as ct_lookup's. */
static __always_inline struct ct_value *ct_lookup_external(struct ct_key *k, struct ct_value *buf,
							    int *copied)
{
	return ct_lookup_in(k, 0, buf, copied);
}

/* Write back a change to an entry ct_lookup or ctu_lookup_any gave, if it was a copy. */
static __always_inline void ct_store(int copied, struct ct_key *k, struct ct_value *v)
{
	if (copied == CT_COPY_POD)
		ctp_replace(0, k, v);
	else if (copied == CT_COPY_EXT)
		ctp_replace(1, k, v);
}

/* Does this forward packet of an unconfirmed flow confirm it? */
static __always_inline int ct_confirms(__u8 proto, __u8 tcp_flags)
{
	return proto != IPPROTO_TCP || (tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_ACK;
}

/* Give a counted flow's connection back to its backend, once (lc.h) — and only to
 * that backend: a stale flow whose id now names another backend gives nothing to
 * the new owner, whose count started from 0. */
static __always_inline void ct_uncount(struct ct_value *v)
{
	if (!(v->flags & SVCXDP_CT_F_COUNTED))
		return;
	v->flags &= ~SVCXDP_CT_F_COUNTED;
	__u32 id = v->backend_id;
	struct backend *b = backends.lookup(&id);
	if (b && ct_backend_same(v, b))
		conns_add(id, -1);
}

/* The backend sent a FIN or RST (`tcp_flags`), matched on an entry of its own (a shared
 * backend's reply entry, a source-NATed flow's SNAT entry): the flow's forward entry `fv`
 * (from the lookup `copied` names) learns it, as it does when the answer matches it
 * directly — the backend's side closed (a RST: both). On the first, its count goes back
 * (lc.h), and it stops being its tuple's current connection: after a reset the client
 * may reuse its port at once, and the new connection's packets must not follow the old
 * backend. Only while it still points at that backend (not at a newer connection's on
 * the tuple). */
static __always_inline void ct_close_forward(struct ct_key *fk, struct ct_value *fv, int copied,
					     __be32 backend, __be16 bport, __u8 tcp_flags)
{
	if (!fv || fv->nat_ip != backend || fv->nat_port != bport)
		return;
	struct ct_mark was = ct_mark_of(fv);
	ct_uncount(fv);
	fv->flags |= ct_close_flags(tcp_flags, SVCXDP_CT_F_FIN_BACKEND);
	if (ct_changed(fv, was))
		ct_store(copied, fk, fv);
}

/* The forward entry of a reply entry `rv` (key `rk`: backend -> client), if it still
 * points at that backend: the client's tuple towards the VIP the reply entry names.
 * *fk gets its key, *copied as ct_lookup's. */
static __always_inline struct ct_value *ct_forward_of_reply(const struct ct_key *rk,
							    const struct ct_value *rv,
							    struct ct_key *fk, struct ct_value *fbuf,
							    int *copied)
{
	ct_key_set(fk, rk->dst, rv->nat_ip, rk->dport, rv->nat_port, rk->proto,
		   SVCXDP_CT_DIR_FORWARD);
	struct ct_value *fv = ct_lookup(fk, fbuf, copied);
	if (!fv || fv->nat_ip != rk->src || fv->nat_port != rk->sport)
		return NULL;
	return fv;
}

/* A reply entry past its timeout (closed by the backend's FIN) still serves while its
 * flow's forward entry lives: a half-closed flow whose client goes on sending after a
 * pause gets the backend's acknowledgements translated. (The GC keeps it so too:
 * ct_gc_needed.) */
static __always_inline int ct_reply_kept(const struct ct_key *rk, const struct ct_value *rv,
					 __u64 now)
{
	struct ct_key fk;
	struct ct_value fbuf;
	int copied;
	struct ct_value *fv = ct_forward_of_reply(rk, rv, &fk, &fbuf, &copied);
	return fv && ct_alive(fv, now, rk->proto);
}

/* ct_close_forward for a reply entry `rv` (key `rk`). */
static __always_inline void ct_close_from_reply(const struct ct_key *rk, struct ct_value *rv,
						__u8 tcp_flags)
{
	rv->flags &= ~SVCXDP_CT_F_COUNTED;   /* the count lives on the forward entry */
	struct ct_key fk;
	struct ct_value fbuf;
	int copied;
	struct ct_value *fv = ct_forward_of_reply(rk, rv, &fk, &fbuf, &copied);
	ct_close_forward(&fk, fv, copied, rk->src, rk->sport, tcp_flags);
}

/* Write a confirmed entry. Where the tuple already has one, a current one stays
 * (another CPU confirmed this flow a moment ago) and one that is not current (the
 * tuple's older connection, closed or expired: a bare SYN does not look in
 * conntrack) is overwritten. */
static __always_inline void ct_confirm_entry(struct ct_key *k, struct ct_value *copy, __u64 now)
{
	if (conntrack.insert(k, copy) == 0)
		return;
	struct ct_value *old = conntrack.lookup(k);
	if (old && ct_current(old, now, k->proto))
		return;
	if (old)
		ct_uncount(old);
	conntrack.update(k, copy);
}

/* Move a flow (already refreshed by this packet) and its reply entry, if it has
 * one, from its entry point's unconfirmed table to conntrack. */
static __always_inline void ct_confirm(int external, struct ct_key *fwd, const struct ct_value *v,
				       __u64 now)
{
	struct ct_value copy = *v;
	struct ct_key rk;
	ct_key_set(&rk, copy.nat_ip, fwd->src, copy.nat_port, fwd->sport, fwd->proto,
		   SVCXDP_CT_DIR_REPLY);
	ct_confirm_entry(fwd, &copy, now);
	ct_udp_stamp(fwd, now);
	struct ct_value rcopy;
	struct ct_value *rv = ctu_lookup(external, &rk, &rcopy);
	if (rv) {
		rcopy = *rv;
		ct_confirm_entry(&rk, &rcopy, now);
		ctu_delete(external, &rk);
	}
	ctu_delete(external, fwd);
}

/* Does a reply from this backend need its own conntrack entry? Only when its address
 * serves several frontends (rev_nat then names just one of them). The writer keeps
 * that answer in the backend entry, so a new flow pays no rev_nat lookup. While the
 * writer is still rewriting the entries of an address that just became shared, a new
 * flow may miss its reply entry: its replies are then matched through the forward
 * entry, which works for the frontend rev_nat names, and the frontend that made the
 * address shared is written with the flag before it can be chosen. */
static __always_inline int ct_needs_reply_entry(const struct backend *b)
{
	return b->flags & SVCXDP_BACKEND_F_REPLY_ENTRY;
}

/* Record the reply entry of flow fwd, whose forward entry is v: keyed by what the
 * backend's answer carries (backend -> client), valued as v with the frontend the
 * client addressed in place of the backend; in conntrack when `confirmed`, else in the
 * entry point's unconfirmed table. v is changed. */
static __always_inline void ct_reply_entry(int external, const struct ct_key *fwd,
					   struct ct_value *v, __be32 vip, __be16 vport,
					   int confirmed)
{
	struct ct_key rk;
	ct_key_set(&rk, v->nat_ip, fwd->src, v->nat_port, fwd->sport, fwd->proto,
		   SVCXDP_CT_DIR_REPLY);
	v->nat_ip = vip;
	v->nat_port = vport;
	v->flags &= ~SVCXDP_CT_F_FIN_BOTH;   /* one side's entry: closed by its FIN (svcxdp.h) */
	if (confirmed)
		conntrack.update(&rk, v);
	else
		ctu_update(external, &rk, v);
}

/* Record a new flow: its forward entry, and for a pod's flow its reply entry when
 * ct_needs_reply_entry() (an external flow's: nodeport.h, np_snat). With `counted`,
 * the flow takes one of its backend's active-connection counts. (No FIN or RST starts
 * a flow: ct_may_start.)
 * Two CPUs may take the first packets of one flow at once and choose different
 * backends: a new flow's entry is inserted only if there is none (BPF_NOEXIST),
 * and the CPU that finds one already there follows it. Returns NULL when this
 * packet's choice was recorded, else the entry recorded first. `dead`: where the
 * tuple's dead (expired, reopened or stale) entry is, CT_IN_* — it is overwritten
 * there; two CPUs replacing one dead entry at the same instant can still both
 * write (the later one stands), since a map update cannot compare-and-swap. A new
 * flow goes to the unconfirmed table of the entry point it came in through. */
static __always_inline struct ct_value *ct_create(int external, struct ct_key *fwd, __be32 vip,
						  __be16 vport, const struct backend *b,
						  __u32 backend_id, __u32 svc_id, __u64 now,
						  int counted, int dead, struct ct_value *buf)
{
	struct ct_value v = {};
	v.last_seen = now;
	v.backend_id = backend_id;
	v.svc_id = svc_id;
	v.nat_ip = b->ip;
	v.nat_port = b->port;
	if (counted)
		v.flags = SVCXDP_CT_F_COUNTED;
	int busy;
	if (dead == CT_IN_CONFIRMED) {
		busy = conntrack.update(fwd, &v);
		ct_udp_stamp(fwd, now);
	} else if (dead == CT_IN_UNCONFIRMED)
		busy = ctu_update(external, fwd, &v);
	else
		busy = ctu_insert(external, fwd, &v);
	if (busy) {
		int copied;
		struct ct_value *first = ct_lookup(fwd, buf, &copied);
		if (first)
			return first;
		/* Gone again already (evicted): this packet's choice is as good. */
		if (ctu_update(external, fwd, &v))
			return NULL;
		dead = CT_IN_UNCONFIRMED;
	}
	if (v.flags & SVCXDP_CT_F_COUNTED)
		conns_add(backend_id, 1);
	/* An external flow's reply entry is the tail's to write (nodeport.h, np_snat): a flow
	 * it source-NATs is answered to this node's SNAT port (SVCXDP_CT_DIR_SNAT), never
	 * with this key, and the entry would cost an insert into the large table. */
	if (ct_needs_reply_entry(b) && !external)
		ct_reply_entry(external, fwd, &v, vip, vport, dead == CT_IN_CONFIRMED);
	return NULL;
}

/* The flow a packet from backend:bport to client:cport answers. */
struct reply_match {
	struct ct_value *v;   /* the entry to refresh: the forward one, or a reply entry */
	struct ct_key key;    /* v's key */
	__be32 vip;           /* what the reply's source becomes */
	__be16 vport;
	__u8 via_reply_entry;
	__u8 copied;          /* CT_COPY_*: v is `copy`, from that table: write changes back */
	struct ct_value copy;
};

/* Copy the rev_nat entry of `rk` into `out` (one 8-byte load): 1 if it names `rk`
 * (key_check, computed only for an entry found: most lookups miss), 0 if there is none or
 * the element read had been reused for another address (the kernel hands a replaced
 * element to the next replacement at once). */
static __always_inline int revnat_read(const struct revnat_key *rk, struct revnat_value *out)
{
	struct revnat_value *rn = rev_nat.lookup((void *)rk);
	if (!rn)
		return 0;
	*(__u64 *)out = *(volatile __u64 *)rn;
	return out->key_check == 0 || out->key_check == svcxdp_revnat_check(rk->ip, rk->port, rk->proto);
}
_Static_assert(sizeof(struct revnat_value) == sizeof(__u64), "rev_nat values are read in one load");

/* The frontend a backend address answers for, copied into `out`: 1 if it is a backend of
 * any service (every reply the datapath translates comes from one: a service's or its
 * SNAT port's). Read again when the first read found nothing usable while the writer
 * was replacing entries (maps.h writer_replacing). */
static __always_inline int ct_backend_of_any(__be32 backend, __be16 bport, __u8 proto,
					     struct revnat_value *out)
{
	struct revnat_key rk = {};
	rk.ip = backend;
	rk.port = bport;
	rk.proto = proto;
	if (revnat_read(&rk, out))
		return 1;
	return writer_replacing() && revnat_read(&rk, out);
}

static __always_inline int ct_match_reply(__be32 backend, __be16 bport, __be32 client,
					  __be16 cport, __u8 proto, struct reply_match *m)
{
	struct revnat_value rn;
	if (!ct_backend_of_any(backend, bport, proto, &rn))
		return 0;  /* not a backend of any service: the common non-service case */
	if (rn.flags & SVCXDP_REVNAT_F_SHARED) {
		ct_key_set(&m->key, backend, client, bport, cport, proto, SVCXDP_CT_DIR_REPLY);
		int copied = 0;
		struct ct_value *v = ct_lookup(&m->key, &m->copy, &copied);
		m->copied = copied;
		if (v) {
			m->v = v;
			m->vip = v->nat_ip;
			m->vport = v->nat_port;
			m->via_reply_entry = 1;
			return 1;
		}
	}
	/* The forward entry of client -> VIP:port, if it still points at this backend
	 * (a stale reply from a backend the flow has left is not translated). */
	ct_key_set(&m->key, client, rn.vip, cport, rn.vport, proto, SVCXDP_CT_DIR_FORWARD);
	int copied = 0;
	struct ct_value *v = ct_lookup(&m->key, &m->copy, &copied);
	if (v && (v->nat_ip != backend || v->nat_port != bport))
		/* The tuple's confirmed connection went elsewhere: a newer connection on it,
		 * whose bare SYN did not look in conntrack, may be this backend's. */
		v = ctu_lookup_any(&m->key, &m->copy, &copied);
	m->copied = copied;
	if (!v || v->nat_ip != backend || v->nat_port != bport)
		return 0;
	m->v = v;
	m->vip = rn.vip;
	m->vport = rn.vport;
	m->via_reply_entry = 0;
	return 1;
}

/* A reply ct_match_reply matched: 0 when its flow is dead (the reply is left alone),
 * else the flow learns of it (idle time, the backend's FIN or RST) and 1. A reply
 * entry past its timeout still serves while its flow's forward entry lives. */
static __always_inline int ct_reply_track(struct reply_match *m, __u64 now, __u8 proto,
					  __u8 tcp_flags)
{
	struct ct_value *v = m->v;
	if (!ct_alive(v, now, proto) && !(m->via_reply_entry && ct_reply_kept(&m->key, v, now)))
		return 0;
	struct ct_mark was = ct_mark_of(v);
	if (m->via_reply_entry) {
		ct_touch(v, &m->key, now, tcp_flags, 0);
		if (tcp_flags & (TCPF_FIN | TCPF_RST))
			ct_close_from_reply(&m->key, v, tcp_flags);
	} else if (ct_touch(v, &m->key, now, tcp_flags, SVCXDP_CT_F_FIN_BACKEND)) {
		ct_uncount(v);
	}
	if (ct_changed(v, was))
		ct_store(m->copied, &m->key, v);
	return 1;
}

#endif /* SVCXDP_CONNTRACK_H */
