/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * nodeport.h — traffic from outside the cluster, on the node's external interfaces
 * (the `svcxdp_external` entry point): NodePort, externalIPs and LoadBalancer IPs.
 *
 * After DNAT the FIB says where the backend is. A backend reached through the very
 * interface the client came in on lives on another node: its reply would go straight
 * to the client, so the flow is source-NATed to this node's address on that route
 * (kube-proxy's masquerade) with a port of its own, and the frame leaves with XDP_TX
 * without entering the stack. The SNAT reply entry (SVCXDP_CT_DIR_SNAT, keyed by what
 * the backend's answer carries) reverses both translations. A backend behind another
 * interface (a local pod) keeps the client's address.
 */
#ifndef SVCXDP_NODEPORT_H
#define SVCXDP_NODEPORT_H

#include "maps.h"
#include "nat.h"
#include "conntrack.h"
#include "fib.h"
#include "handoff.h"

/* BPF_FIB_LOOKUP_SRC (kernel >= 6.7): the lookup also returns the source address the
 * node would use on that route, which is the SNAT address. bcc's headers may predate
 * the enum value. */
#define SVCXDP_FIB_LOOKUP_SRC 16

/* Where a translated packet goes next. */
struct np_route {
	int rc;           /* BPF_FIB_LKUP_RET_* */
	__u32 ifindex;    /* egress device */
	__be32 src;       /* this node's address on that route */
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u8 cached;      /* read from the FIB result cache, not looked up */
	__u16 mtu;        /* the frame is larger than the route's MTU, this; else 0 */
};

/* The address and port an external flow to another node leaves with. ip 0: none. */
struct np_snat {
	__be32 ip;
	__be16 port;
};

/* The route to the frame's destination, with the source address the node uses on it:
 * from the FIB result cache (fib.h) when its slot is fresh and was filled by a lookup
 * that asked for the source, else looked up (and remembered on success). `now`: the
 * coarse clock. The lookup is made without the frame's size, and the size compared
 * with the route's MTU here (r->mtu): a lookup that finds the frame too large stops
 * before naming the device and the source, and whether a new flow needs SNAT does
 * not depend on its first packet's size. */
static __always_inline void np_route_lookup(struct xdp_md *ctx, const struct iphdr *ip, __u64 now,
					    struct np_route *r)
{
	struct fib_slot s;
	r->mtu = 0;
	if (fib_cache_find(ctx, ip, now, &s) && s.c->src) {
		r->rc = BPF_FIB_LKUP_RET_SUCCESS;
		r->ifindex = s.c->ifindex;
		r->src = s.c->src;
		__builtin_memcpy(r->smac, s.c->smac, ETH_ALEN);
		__builtin_memcpy(r->dmac, s.c->dmac, ETH_ALEN);
		r->cached = 1;
		return;
	}
	r->cached = 0;
	struct bpf_fib_lookup p = {};
	fib_params_set(&p, ctx, ip, ip->daddr);
	p.tot_len = 0;
	r->rc = bpf_fib_lookup(ctx, &p, sizeof(p), SVCXDP_FIB_LOOKUP_SRC);
	r->ifindex = p.ifindex;
	r->src = p.ipv4_src;
	__builtin_memcpy(r->smac, p.smac, ETH_ALEN);
	__builtin_memcpy(r->dmac, p.dmac, ETH_ALEN);
	if (r->rc != BPF_FIB_LKUP_RET_SUCCESS)
		return;
	/* On success the lookup names the route's MTU (Linux 5.12). */
	if (s.len > p.mtu_result)
		r->mtu = p.mtu_result;
	else if (p.ipv4_src)
		fib_cache_fill(&s, ip->daddr, &p, p.ipv4_src);
}

/* Does the route to the backend leave by the interface the packet came in on? Then
 * the backend is on another node and the flow needs SNAT. (With no neighbour entry
 * yet the FIB still names the device and the source address.) */
static __always_inline int np_hairpin(struct xdp_md *ctx, const struct np_route *r)
{
	return (r->rc == BPF_FIB_LKUP_RET_SUCCESS || r->rc == BPF_FIB_LKUP_RET_NO_NEIGH) &&
	       r->ifindex == ctx->ingress_ifindex && r->src != 0;
}

#define NP_RECLAIM_NS ((__s64)SVCXDP_SNAT_RECLAIM_MS * 1000000LL)

/* What np_snat_alloc's port search found (np_pending.pick). */
#define NP_PICK_NONE 0      /* every port probed is busy */
#define NP_PICK_INSERTED 1  /* a free port: its reply entry is recorded */
#define NP_PICK_OWN 2       /* this flow's own entry, or a dead one: overwritten */
#define NP_PICK_RECLAIM 3   /* an unconfirmed flow's: the oldest probed */

/* Is a SNAT reply entry the one of this flow (client tuple to the frontend, fk)? */
static __always_inline int np_owns(const struct ct_value *h, const struct ct_key *fk)
{
	return h->peer_ip == fk->src && h->peer_port == fk->sport && h->nat_ip == fk->dst &&
	       h->nat_port == fk->dport;
}

/* The SNAT reply entry of flow fk: keyed by what the backend's answer carries. */
static __always_inline void np_reply_value(struct ct_value *rv, const struct ct_key *fk,
					   __u32 svc_id, __u64 now, __u8 tcp_flags)
{
	__builtin_memset(rv, 0, sizeof(*rv));
	rv->last_seen = now;
	rv->nat_ip = fk->dst;
	rv->nat_port = fk->dport;
	rv->peer_ip = fk->src;
	rv->peer_port = fk->sport;
	rv->svc_id = svc_id;
	if (tcp_flags & (TCPF_FIN | TCPF_RST))
		rv->flags = SVCXDP_CT_F_CLOSING;
}

/* The flow that holds a SNAT port, by its reply entry h (key rk): the client's forward
 * entry, if it still leaves by that port (an unconfirmed one copied into *buf).
 * *confirmed: it is in conntrack. */
static __always_inline struct ct_value *np_holder(const struct ct_key *rk, const struct ct_value *h,
						  int *confirmed, struct ct_value *buf)
{
	struct ct_key fk;
	ct_key_set(&fk, h->peer_ip, h->nat_ip, h->peer_port, h->nat_port, rk->proto,
		   SVCXDP_CT_DIR_FORWARD);
	struct ct_value *f = conntrack.lookup(&fk);
	*confirmed = f != NULL;
	if (!f)
		f = ctu_lookup(1, &fk, buf);
	if (!f || !(f->flags & SVCXDP_CT_F_SNAT) || f->peer_ip != rk->dst ||
	    f->peer_port != rk->dport || f->nat_ip != rk->src || f->nat_port != rk->sport) {
		*confirmed = 0;
		return NULL;
	}
	return f;
}

/* Is node_ip:port a frontend (a NodePort, an externalIP or LoadBalancer IP the node
 * holds)? Then it is not a SNAT port to give: svcxdp.c looks frontends up before SNAT
 * replies, so a backend's answers to it would be taken for new flows to that frontend
 * (a NodePort range reaching past 32767, a high port on an address the node holds). The
 * external-scope entry is enough: every way in from outside has one (its cluster-scope
 * twin shares its address and port). */
static __always_inline int np_port_is_frontend(__be32 node_ip, __u16 port, __u8 proto)
{
	struct svc_key sk = {};
	sk.vip = node_ip;
	sk.port = bpf_htons(port);
	sk.proto = proto;
	sk.scope = SVCXDP_SCOPE_EXTERNAL;
	return services.lookup(&sk) != NULL;
}

/* Choose the SNAT port of flow fk and record its reply entry: in ct_unconfirmed while
 * the flow is unconfirmed (a flood of one-packet flows then only evicts its own kind
 * there), in conntrack once it is. The first try is the client's own port folded into
 * the range (kept when free, as netfilter does), the next ones random ports
 * (--random-fully), so two clients using the same port towards the same backend
 * collide and the second takes another; a port that is a frontend on the node's
 * address is skipped (np_port_is_frontend). A port is taken over when its entry is this
 * flow's own (a reopened flow), or dead (its flow's forward entry dead too: a one-way
 * flow's replies never refresh it), or held by an unconfirmed flow for longer than
 * SVCXDP_SNAT_RECLAIM_MS; when SVCXDP_SNAT_RECLAIM_AFTER probes are busy and met an
 * unconfirmed holder, the oldest of those loses its port. A confirmed flow's port is
 * never taken. Returns 0, 1 when the port was taken from an unconfirmed flow, -1 when
 * every port probed is held by a confirmed flow. */
static __always_inline int np_snat_alloc(const struct ct_key *fwd, __be32 backend, __be16 bport,
					 __be32 node_ip, __u32 svc_id, __u64 now, __u8 tcp_flags,
					 int confirmed, struct np_pending *pd, struct np_snat *out)
{
	struct ct_key rk;
	ct_key_set(&rk, backend, node_ip, bport, 0, fwd->proto, SVCXDP_CT_DIR_SNAT);
	struct ct_value rv, buf, fbuf;
	np_reply_value(&rv, fwd, svc_id, now, tcp_flags);
	__u32 want = bpf_ntohs(fwd->sport);
	/* The probes only look and note (in map memory, np_pending: every path through
	 * one probe then reaches the next in the same state, and the verifier walks each
	 * probe once); a port held by another flow is judged once, after the loop. */
	pd->pick = NP_PICK_NONE;
	pd->dead_port = 0;
	pd->oldest_port = 0;
	pd->oldest_age = -1;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < SVCXDP_SNAT_TRIES; i++) {
		/* Random after the first: linear probing piles busy ports up in runs, and one
		 * flow would meet the same full run on every retry. */
		if (i)
			want = bpf_get_prandom_u32();
		/* Enough probes met unconfirmed holders (a flood): take the oldest of them
		 * rather than paying two lookups per probe up to SVCXDP_SNAT_TRIES. */
		if (i == SVCXDP_SNAT_RECLAIM_AFTER && pd->oldest_port)
			break;
		__u16 port = SVCXDP_SNAT_PORT_MIN + (want & (SVCXDP_SNAT_PORT_COUNT - 1));
		if (np_port_is_frontend(node_ip, port, fwd->proto))
			continue;
		rk.dport = bpf_htons(port);
		struct ct_value *h = conntrack.lookup(&rk);
		if (h) {
			if (np_owns(h, fwd)) {
				pd->pick = NP_PICK_OWN;
				pd->pick_port = port;
				break;
			}
			if (!ct_alive(h, now, rk.proto) && !pd->dead_port)
				pd->dead_port = port;
			continue;
		}
		h = ctu_lookup(1, &rk, &buf);
		if (h) {
			if (np_owns(h, fwd)) {
				pd->pick = NP_PICK_OWN;
				pd->pick_port = port;
				break;
			}
			__s64 age = ct_idle_ns(h, now);
			if (age > pd->oldest_age) {
				pd->oldest_age = age;
				pd->oldest_port = port;
			}
			if (age > NP_RECLAIM_NS)
				break;
			continue;
		}
		int busy = confirmed ? conntrack.insert(&rk, &rv) : ctu_insert(1, &rk, &rv);
		if (!busy) {
			pd->pick = NP_PICK_INSERTED;
			pd->pick_port = port;
			break;
		}
	}
	__u8 pick = pd->pick;
	int c;
	struct ct_value *h;
	if (pick == NP_PICK_NONE && pd->dead_port) {
		/* A dead reply entry in conntrack: free unless its flow still sends (a one-way
		 * flow's replies never refresh it), and nothing unconfirmed sits there. */
		rk.dport = bpf_htons((__u16)pd->dead_port);
		h = conntrack.lookup(&rk);
		if (h && !ct_alive(h, now, rk.proto) && !np_holder(&rk, h, &c, &fbuf) &&
		    !ctu_lookup(1, &rk, &buf)) {
			pick = NP_PICK_OWN;
			pd->pick_port = pd->dead_port;
		}
	}
	if (pick == NP_PICK_NONE && pd->oldest_port) {
		/* The oldest unconfirmed holder probed, unless its flow was confirmed a moment
		 * ago (the tail moves its entry next). */
		rk.dport = bpf_htons((__u16)pd->oldest_port);
		h = ctu_lookup(1, &rk, &buf);
		if (h && !(np_holder(&rk, h, &c, &fbuf) && c)) {
			pick = NP_PICK_RECLAIM;
			pd->pick_port = pd->oldest_port;
		}
	}
	if (pick == NP_PICK_NONE)
		return -1;
	rk.dport = bpf_htons((__u16)pd->pick_port);
	if (pick != NP_PICK_INSERTED) {
		if (confirmed) {
			conntrack.update(&rk, &rv);
			ctu_delete(1, &rk);
		} else {
			ctu_update(1, &rk, &rv);
			conntrack.delete(&rk);
		}
	}
	out->ip = node_ip;
	out->port = rk.dport;
	return pick == NP_PICK_RECLAIM;
}

/* A packet of a source-NATed flow (already translated: node:port -> backend), each one
 * while the flow is unconfirmed, else when its forward entry was refreshed or closed:
 * does the flow still hold its port? Its reply entry may have been evicted (from
 * ct_unconfirmed by a flood; from conntrack by the LRU, when the flow is one-way and
 * nothing else reads it), or the port taken by another flow (np_snat_alloc).
 * Kept: the entry is refreshed (a retransmitted SYN keeps its port), moved to conntrack
 * when this packet confirmed the flow, or written back when it was evicted; a FIN or RST
 * from the client closes it (it stays while the flow's forward entry lives: ctgc.h,
 * np_snat_alloc; left open, a connection the client reset and the backend then left
 * unanswered held its port for the whole TCP timeout); returns 1.
 * Taken by another flow: 0 (the caller chooses a new port). */
static __always_inline int np_snat_kept(const struct ct_key *fk, struct iphdr *ip, __be16 *ports,
					__u32 svc_id, __u64 now, __u8 tcp_flags, int confirmed)
{
	struct ct_key rk;
	ct_key_set(&rk, ip->daddr, ip->saddr, ports[1], ports[0], ip->protocol, SVCXDP_CT_DIR_SNAT);
	__u8 closing = tcp_flags & (TCPF_FIN | TCPF_RST) ? SVCXDP_CT_F_CLOSING : 0;
	struct ct_value *h = conntrack.lookup(&rk);
	if (h && ct_alive(h, now, rk.proto)) {
		if (!np_owns(h, fk))
			return 0;
		h->flags |= closing;
		return 1;
	}
	struct ct_value u;
	if (ctu_lookup(1, &rk, &u)) {
		if (!np_owns(&u, fk))
			return 0;
		u.last_seen = now;
		u.flags |= closing;
		if (!confirmed) {
			ctu_store(1, &rk, &u);
			return 1;
		}
		conntrack.update(&rk, &u);
		ctu_delete(1, &rk);
		return 1;
	}
	struct ct_value rv;
	np_reply_value(&rv, fk, svc_id, now, tcp_flags);
	if (confirmed) {
		if (h)
			return conntrack.update(&rk, &rv) == 0;
		return conntrack.insert(&rk, &rv) == 0;
	}
	if (ctu_insert(1, &rk, &rv))
		return 0;
	if (h)
		conntrack.delete(&rk);
	return 1;
}

/* An external flow's packet, handed to the tail program (np_scratch): what it has to
 * do (SVCXDP_NP_*), the flow's client tuple and frontend (the packet is DNATed by
 * then), its service; for a new flow, whether its backend needs a reply entry and which
 * table its entry went to. */
static __always_inline void np_pending_set(const struct ct_key *fwd, __u32 svc_id, int reply_entry,
					   int confirmed, int vlan, __u8 mode)
{
	__u32 zero = 0;
	struct np_pending *pd = np_scratch.lookup(&zero);
	if (!pd)
		return;
	pd->client = fwd->src;
	pd->cport = fwd->sport;
	pd->vip = fwd->dst;
	pd->vport = fwd->dport;
	pd->svc_id = svc_id;
	pd->reply_entry = reply_entry != 0;
	pd->confirmed = confirmed != 0;
	pd->vlan = vlan ? 4 : 0;
	pd->mode = mode;
}

/* The first fragment's record (svcxdp.c, frag_record) of a flow the tail then drops:
 * forgotten, or the datagram's later fragments would still be translated and sent on
 * without its SNAT. */
static __always_inline void np_frag_forget(const struct iphdr *ip, const struct np_pending *pd)
{
	if (!(ip->frag_off & bpf_htons(IP_MF)))
		return;
	struct frag_key k = {};
	frag_key_set(&k, ip, pd->client, pd->vip);
	fragments.delete(&k);
}

/* The packet handed to the tail as its sender sent it (np_pending.sent). */
static __always_inline void np_sent_set(const struct sent_tuple *sent)
{
	__u32 zero = 0;
	struct np_pending *pd = np_scratch.lookup(&zero);
	if (!pd)
		return;
	pd->sent = *sent;
	pd->has_sent = 1;
}

static __always_inline void np_pending_clear(void)
{
	__u32 zero = 0;
	struct np_pending *pd = np_scratch.lookup(&zero);
	if (pd) {
		pd->mode = SVCXDP_NP_NONE;
		pd->has_sent = 0;
	}
}

/* The flow's entry, in the table handle_service left it in (np_pending.confirmed): the
 * tuple's dead entry may sit in conntrack while the flow waits unconfirmed. An
 * unconfirmed one is a copy in *buf: changes go back with ctu_store. */
static __always_inline struct ct_value *np_flow(struct ct_key *fk, const struct np_pending *pd,
						struct ct_value *buf)
{
	if (pd->confirmed)
		return conntrack.lookup(fk);
	return ctu_lookup(1, fk, buf);
}

/* A new flow the tail does not source-NAT (its backend is behind another interface:
 * a local pod) is answered with the client's address: its reply entry, when the
 * backend needs one, goes where its forward entry is (ct_create left it to us). */
static __always_inline void np_reply_entry(struct ct_key *fk, const struct np_pending *pd)
{
	struct ct_value copy;
	struct ct_value *v = np_flow(fk, pd, &copy);
	if (!v)
		return;
	copy = *v;
	ct_reply_entry(1, fk, &copy, pd->vip, pd->vport, pd->confirmed);
}

/* The tail's part of SNAT. A new flow (SVCXDP_NP_NEW, already DNATed, its entry
 * recorded): when the backend is behind the interface the packet came in on, choose
 * the SNAT port, note it in the flow's entry (and its first fragment's record) and
 * rewrite the source; else write its reply entry if it needs one. A packet of an
 * unconfirmed SNATed flow (SVCXDP_NP_CHECK, source already rewritten): keep its port
 * (np_snat_kept) or, if another flow took it, choose a new one. Returns -1 when no
 * port is free (the packet is dropped), 1 when the port was taken from an unconfirmed
 * flow, else 0. */
static __always_inline int np_snat(struct xdp_md *ctx, struct iphdr *ip, void *data_end,
				   struct np_pending *pd, __u8 mode, struct events *ev)
{
	void *l4 = (void *)ip + ip->ihl * 4;
	__be16 *ports = l4;
	struct l4_csum csum = {};
	__u8 tcp_flags = 0;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return 0;
		csum.check = &tcp->check;
		tcp_flags = ((__u8 *)tcp)[13];
	} else if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return 0;
		csum.check = &udp->check;
		csum.is_udp = 1;
	} else {
		return 0;
	}
	__u64 now = bpf_ktime_get_coarse_ns();
	/* The flow as its client sent it: the packet's source may no longer be the client
	 * (the hairpin address, when the client is its own backend; the SNAT address). */
	struct ct_key fk;
	ct_key_set(&fk, pd->client, pd->vip, pd->cport, pd->vport, ip->protocol,
		   SVCXDP_CT_DIR_FORWARD);
	__be32 node_ip = ip->saddr;
	if (mode == SVCXDP_NP_NEW) {
		struct np_route r;
		np_route_lookup(ctx, ip, now, &r);
		if (!np_hairpin(ctx, &r)) {
			if (pd->reply_entry)
				np_reply_entry(&fk, pd);
			return 0;
		}
		node_ip = r.src;
	}
	struct ct_value vbuf;
	struct ct_value *v = np_flow(&fk, pd, &vbuf);
	int confirmed = pd->confirmed;
	if (mode != SVCXDP_NP_NEW &&
	    (!v || np_snat_kept(&fk, ip, ports, pd->svc_id, now, tcp_flags, confirmed)))
		return 0;
	struct np_snat snat;
	int rc = np_snat_alloc(&fk, ip->daddr, ports[1], node_ip, pd->svc_id, now, tcp_flags,
			       confirmed, pd, &snat);
	if (rc < 0) {
		/* Not kept without its SNAT: its next packet would leave untranslated. It
		 * starts afresh instead. */
		if (v)
			ct_uncount(v);
		conntrack.delete(&fk);
		ctu_delete(1, &fk);
		ev->main = SVCXDP_CNT_SNAT_EXHAUSTED;
		return -1;
	}
	if (v) {
		v->peer_ip = snat.ip;
		v->peer_port = snat.port;
		v->flags |= SVCXDP_CT_F_SNAT;
		if (!confirmed)
			ctu_store(1, &fk, v);
	}
	if (mode == SVCXDP_NP_NEW && (ip->frag_off & bpf_htons(IP_MF))) {
		struct frag_key k = {};
		frag_key_set(&k, ip, pd->client, pd->vip);
		struct frag_value *f = fragments.lookup(&k);
		if (f)
			f->peer_ip = snat.ip;
	}
	nat_src(ip, &ports[0], &csum, snat.ip, snat.port);
	ev->main = SVCXDP_CNT_SNAT_NEW;
	return rc;
}

/* Send a translated frame on: back out of the interface it came in on with XDP_TX,
 * to another device that is a redirect target with bpf_redirect_map (fib.h), else to
 * the stack (TTL about to expire, VLAN tags, a device that is not a redirect target, or
 * every other device when built with SVCXDP_STACK_FORWARD). Without a neighbour entry
 * yet, to the tc program when it leaves the way it came or carries the node's address
 * (handoff.h), else to the stack. One
 * larger than its route's MTU goes to the stack to be fragmented, or with DF set is
 * answered "fragmentation needed" (reject.h; in both builds: this lookup is made
 * anyway, and a local pod behind an overlay's smaller MTU is the common case). The
 * body of the svcxdp_np_out tail program: the frame is re-parsed, its headers already
 * hold the new addresses.
 * A VLAN-tagged frame of a flow gets the tail's checks and SNAT like any other (once
 * skipped, its flow went to another node without SNAT), then goes to the stack. Its IP header's place comes from the pending record, as an
 * offset the verifier does not know: one walk of those for both places (parsed here,
 * the two places doubled this program's verification). */
static __always_inline int np_forward(struct xdp_md *ctx, struct events *ev)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end) {
		np_pending_clear();
		return XDP_PASS;
	}
	__u32 zero = 0;
	struct np_pending *pd = np_scratch.lookup(&zero);
	/* Like the mode, taken at once (the next packet may set none). */
	int has_sent = pd && pd->has_sent;
	if (has_sent)
		pd->has_sent = 0;
	int snat_seen = 0;
	if (pd && pd->mode) {
		/* Taken at once: left set, it would be read as the next packet's, and a
		 * backend's answer, which sets none, would be source-NATed as a new flow. */
		__u8 mode = pd->mode;
		pd->mode = SVCXDP_NP_NONE;
		snat_seen = 1;
		__u32 vlan = pd->vlan & 4;
		struct iphdr *fip = (void *)(eth + 1) + vlan;   /* the flow's IP header */
		if ((void *)(fip + 1) > data_end)
			return XDP_PASS;
		int rc = np_snat(ctx, fip, data_end, pd, mode, ev);
		if (rc < 0) {
			np_frag_forget(fip, pd);
			return XDP_DROP;
		}
		if (rc > 0)
			counters_bump(SVCXDP_CNT_SNAT_RECLAIMED);
		if (vlan)
			return XDP_PASS;
	}
	if (eth->h_proto != ETH_P_IP_BE)
		return XDP_PASS;
	struct np_route r;
	np_route_lookup(ctx, ip, bpf_ktime_get_coarse_ns(), &r);
	if (ip->ttl <= 1)
		return XDP_PASS;
	if (r.mtu) {
		/* Answered for a packet np_snat did not see (an established flow's, a reply's);
		 * a flow's first packets go to the stack: answered too, they made every state
		 * np_snat leaves walk the answer, which doubled this program's verification. */
		if (snat_seen || !has_sent || !frag_answerable(ctx, eth, ip, &pd->sent))
			return XDP_PASS;
		ev->main = SVCXDP_CNT_FRAG_NEEDED;   /* no other event: np_snat did not run */
		return frag_needed_reply(ctx, &pd->sent, r.mtu);
	}
	if (r.rc == BPF_FIB_LKUP_RET_NO_NEIGH &&
	    (ip->saddr == r.src || r.ifindex == ctx->ingress_ifindex))
		/* From one of the node's addresses (the route's own, or another the frame
		 * was sent to), which the stack would drop unsent; or on its way back out,
		 * where the flow's later frames leave with XDP_TX (handoff.h). */
		return handoff_pass(ctx, r.ifindex, ev);
	if (r.rc != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	if (r.cached) {
		/* Sent on by a cached answer, counted as the pods' path counts it; in the
		 * main event when this packet has none (every packet but a new flow's). */
		if (ev->main == SVCXDP_CNT_MAX)
			ev->main = SVCXDP_CNT_FIB_CACHED;
		else
			counters_bump(SVCXDP_CNT_FIB_CACHED);
	}
	if (r.ifindex != ctx->ingress_ifindex) {
#ifdef SVCXDP_STACK_FORWARD
		return XDP_PASS;
#else
		return fib_redirect(eth, ip, r.ifindex, r.smac, r.dmac, ev);
#endif
	}
	ip_decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, r.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, r.smac, ETH_ALEN);
	ev->extra = SVCXDP_CNT_XDP_TX;
	return XDP_TX;
}

/* A reply from a backend on another node to a source-NATed flow: backend:bport ->
 * node:snat_port becomes VIP:vport -> client:cport. Returns -1 when the packet is no
 * such reply (the caller goes on), else the verdict. */
static __always_inline int np_snat_reply(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					 __be16 *sport, __be16 *dport, struct l4_csum *csum,
					 __u8 tcp_flags, struct events *ev)
{
	if (bpf_ntohs(*dport) < SVCXDP_SNAT_PORT_MIN)
		return -1;
	struct ct_key k;
	ct_key_set(&k, ip->saddr, ip->daddr, *sport, *dport, ip->protocol, SVCXDP_CT_DIR_SNAT);
	/* In ct_unconfirmed while the flow is unconfirmed: an answer refreshes it there
	 * (an unconfirmed flow whose backend still answers keeps its port). */
	struct ct_value buf, fbuf;
	int copied, fcopied;
	struct ct_value *v = ct_lookup_external(&k, &buf, &copied);
	__u64 now = bpf_ktime_get_coarse_ns();
	if (!v)
		return -1;
	if (!ct_alive(v, now, k.proto)) {
		/* A one-way flow's reply entry is refreshed by nothing: its flow's forward
		 * entry says whether it still lives (np_snat_alloc judges the port so too). */
		int c;
		struct ct_value *f = np_holder(&k, v, &c, &fbuf);
		if (!f || !ct_alive(f, now, k.proto))
			return -1;
	}
	struct ct_mark was = ct_mark_of(v);
	ct_touch(v, &k, now, tcp_flags, 0);
	if (tcp_flags & (TCPF_FIN | TCPF_RST)) {
		/* The backend closes its side: the flow learns it (its count, its timeout, its
		 * tuple). */
		struct ct_key fk;
		ct_key_set(&fk, v->peer_ip, v->nat_ip, v->peer_port, v->nat_port, k.proto,
			   SVCXDP_CT_DIR_FORWARD);
		struct ct_value *fv = ct_lookup_external(&fk, &fbuf, &fcopied);
		ct_close_forward(&fk, fv, fcopied, k.src, k.sport, tcp_flags);
	}
	if (ct_changed(v, was))
		ct_store(copied, &k, v);
	struct sent_tuple sent = { k.src, k.dst, k.sport, k.dport };
	np_sent_set(&sent);
	nat_src(ip, sport, csum, v->nat_ip, v->nat_port);
	nat_dst(ip, dport, csum, v->peer_ip, v->peer_port);
	frag_record(ip, k.src, k.dst, v->nat_ip, v->peer_ip, SVCXDP_CT_DIR_REPLY);
	svc_account(v->svc_id, frame_bytes(ip, (void *)ip - (void *)eth), 0, 0);
	ev->main = SVCXDP_CNT_SNAT_REPLY;
	return SVCXDP_VERDICT_NP_OUT;
}

#endif /* SVCXDP_NODEPORT_H */
