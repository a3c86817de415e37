/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * fib.h — after a rewrite, send the frame on without the node's stack: look the next
 * hop up in the FIB and redirect the frame to the egress device (a local pod's veth,
 * or the node's external interface towards another node), when that device is one the
 * agent made a redirect target (tx_ports, maps.h). Everything else goes to the stack
 * (XDP_PASS), untouched: no route or neighbour yet (the stack does ARP), TTL about to
 * expire (the stack sends the ICMP error), a frame larger than the egress MTU without
 * DF (the stack fragments it), VLAN-tagged frames, and devices not in tx_ports. One
 * with DF is answered "fragmentation needed" about the frame as it was sent
 * (reject.h, frag_answerable). Built with -DSVCXDP_STACK_FORWARD, every translated
 * frame goes to the stack.
 *
 * The lookup is about a third of a pod's new UDP flow in this program (datapath-notes
 * §18), and the answer for a backend rarely changes: the answers are kept in a per-CPU
 * cache that the agent invalidates on every routing change (fib_gen), used by the pods'
 * path here and by the NodePort tail's lookups (nodeport.h, np_route_lookup).
 */
#ifndef SVCXDP_FIB_H
#define SVCXDP_FIB_H

#include "flowhash.h"
#include "maps.h"
#include "reject.h"

/* Forwarding in XDP makes the program the router: it decrements the TTL itself
 * (also used by nodeport.h). */
static __always_inline void ip_decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

/* A FIB lookup of the route to `dst` for this packet, as it would be forwarded. */
static __always_inline void fib_params_set(struct bpf_fib_lookup *p, struct xdp_md *ctx,
					   const struct iphdr *ip, __be32 dst)
{
	p->family = 2; /* AF_INET */
	p->tos = ip->tos;
	p->l4_protocol = ip->protocol;
	p->tot_len = bpf_ntohs(ip->tot_len);
	p->ipv4_src = ip->saddr;
	p->ipv4_dst = dst;
	p->ifindex = ctx->ingress_ifindex;
}

/* Redirect a routed frame to `ifindex` if that device is a redirect target: TTL
 * decremented, MAC addresses from the FIB. Returns XDP_REDIRECT, or XDP_PASS having
 * changed nothing. Counted in ev->extra unless a rarer event holds it. */
static __always_inline int fib_redirect(struct ethhdr *eth, struct iphdr *ip, __u32 ifindex,
					const __u8 *smac, const __u8 *dmac, struct events *ev)
{
	/* The map's verdict first: XDP_PASS when the device is not listed. The frame
	 * is only handed over after the program returns, so it may still change. */
	if (tx_ports.redirect_map(ifindex, XDP_PASS) != XDP_REDIRECT) {
		if (ev->extra == SVCXDP_CNT_MAX)
			ev->extra = SVCXDP_CNT_REDIRECT_REFUSED;
		return XDP_PASS;
	}
	ip_decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	if (ev->extra == SVCXDP_CNT_MAX)
		ev->extra = SVCXDP_CNT_FIB_REDIRECT;
	return XDP_REDIRECT;
}

/* The FIB result cache (struct fib_cache_entry): a frame's destination and ingress
 * device pick one slot per CPU (csrc/flowhash.h). */
static __always_inline struct fib_cache_entry *fib_cache_slot(__be32 dst, __u32 iif)
{
	__u32 i = svcxdp_fib_cache_slot(dst, iif, SVCXDP_FIB_CACHE_BITS);
	return fib_cache.lookup(&i);
}

#define FIB_CACHE_TTL_UNITS ((__u32)(((__u64)SVCXDP_FIB_CACHE_TTL_MS * 1000000ULL) >> 20))

/* Is `c` what a FIB lookup would answer now for this frame? Only with the default
 * policy rules and no multipath route (the watcher turns the cache off otherwise, gen
 * 0) does the answer depend on nothing but the destination, the ingress device's
 * forwarding setting and the egress MTU; the generation vouches that none of those
 * changed since (up to the watcher's notice, a few ms), the TTL bounds it if no
 * watcher is left to notice. */
static __always_inline int fib_cache_fresh(const struct fib_cache_entry *c, __u32 gen, __be32 dst,
					   __u32 iif, __u16 len, __u32 stamp)
{
	return c->gen == gen && c->dst == dst && c->iif == iif && len <= c->ok_len &&
	       stamp - c->stamp < FIB_CACHE_TTL_UNITS;
}

/* A frame's place in the cache: its slot (NULL while the cache is off) and what a
 * fill of that slot records. */
struct fib_slot {
	struct fib_cache_entry *c;
	__u32 gen;
	__u32 iif;
	__u32 stamp;
	__u16 len;
};

/* Find the frame's slot; true when it holds a fresh answer for this frame. `now`: the
 * coarse clock. Per CPU, so no other CPU writes the slot while this one reads it. */
static __always_inline int fib_cache_find(struct xdp_md *ctx, const struct iphdr *ip, __u64 now,
					  struct fib_slot *s)
{
	__u32 zero = 0;
	struct fib_gen *g = fib_gen.lookup(&zero);
	s->gen = g ? g->gen : 0;
	s->iif = ctx->ingress_ifindex;
	s->len = bpf_ntohs(ip->tot_len);
	s->stamp = (__u32)(now >> 20);
	s->c = s->gen ? fib_cache_slot(ip->daddr, s->iif) : NULL;
	return s->c && fib_cache_fresh(s->c, s->gen, ip->daddr, s->iif, s->len, s->stamp);
}

/* Remember a successful lookup `p` in the frame's slot (if the cache is on). `src`:
 * the source address the lookup chose (BPF_FIB_LOOKUP_SRC), 0 if not asked. Frames up
 * to the route's MTU, which a successful lookup names (mtu_result), are sent with it. */
static __always_inline void fib_cache_fill(const struct fib_slot *s, __be32 dst,
					   const struct bpf_fib_lookup *p, __be32 src)
{
	struct fib_cache_entry *c = s->c;
	if (!c)
		return;
	c->dst = dst;
	c->iif = s->iif;
	c->gen = s->gen;
	c->ifindex = p->ifindex;
	c->src = src;
	__builtin_memcpy(c->smac, p->smac, ETH_ALEN);
	__builtin_memcpy(c->dmac, p->dmac, ETH_ALEN);
	c->ok_len = p->mtu_result;
	c->stamp = s->stamp;
}

/* Route a translated frame: the cached next hop if it is fresh, else a FIB lookup
 * (remembered when it succeeds and the cache is on). `sent`: the frame before its
 * translation. */
static __always_inline int forward(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
				   int vlan, __u64 now, const struct sent_tuple *sent,
				   struct events *ev)
{
#ifndef SVCXDP_STACK_FORWARD
	if (!vlan && ip->ttl > 1) {
		struct fib_slot s;
		if (fib_cache_find(ctx, ip, now, &s)) {
			if (ev->extra == SVCXDP_CNT_MAX)
				ev->extra = SVCXDP_CNT_FIB_CACHED;
			return fib_redirect(eth, ip, s.c->ifindex, s.c->smac, s.c->dmac, ev);
		}
		struct bpf_fib_lookup p = {};
		fib_params_set(&p, ctx, ip, ip->daddr);
		int rc = bpf_fib_lookup(ctx, &p, sizeof(p), 0);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
			fib_cache_fill(&s, ip->daddr, &p, 0);
			return fib_redirect(eth, ip, p.ifindex, p.smac, p.dmac, ev);
		}
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && frag_answerable(ctx, eth, ip, sent)) {
			if (ev->extra == SVCXDP_CNT_MAX)
				ev->extra = SVCXDP_CNT_FRAG_NEEDED;
			else
				counters_bump(SVCXDP_CNT_FRAG_NEEDED);
			return frag_needed_reply(ctx, sent, p.mtu_result);
		}
	}
#endif
	return XDP_PASS;
}

#endif /* SVCXDP_FIB_H */
