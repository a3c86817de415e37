/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * fib.h — after a rewrite, hand the packet to the kernel stack (default), or, built
 * with -DSVCXDP_FIB_REDIRECT, look the next hop up in the FIB and redirect the
 * frame straight to the egress device. Anything the FIB cannot resolve (no
 * neighbour yet, TTL about to expire, VLAN-tagged frames) still goes to the
 * stack, which sends the ICMP errors and does ARP.
 */
#ifndef SVCXDP_FIB_H
#define SVCXDP_FIB_H

#include "maps.h"

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

static __always_inline int forward(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
				   int vlan, struct events *ev)
{
#ifdef SVCXDP_FIB_REDIRECT
	if (!vlan && ip->ttl > 1) {
		struct bpf_fib_lookup p = {};
		fib_params_set(&p, ctx, ip, ip->daddr);
		if (bpf_fib_lookup(ctx, &p, sizeof(p), 0) == BPF_FIB_LKUP_RET_SUCCESS) {
			ip_decrease_ttl(ip);
			__builtin_memcpy(eth->h_dest, p.dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, p.smac, ETH_ALEN);
			ev->extra = SVCXDP_CNT_FIB_REDIRECT;
			return bpf_redirect(p.ifindex, 0);
		}
	}
#endif
	return XDP_PASS;
}

#endif /* SVCXDP_FIB_H */
