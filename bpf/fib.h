/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * fib.h — after a rewrite, send the frame on without the node's stack: look the next
 * hop up in the FIB and redirect the frame to the egress device (a local pod's veth,
 * or the node's external interface towards another node), when that device is one the
 * agent made a redirect target (tx_ports, maps.h). Everything else goes to the stack
 * (XDP_PASS), untouched: no route or neighbour yet (the stack does ARP), TTL about to
 * expire or a frame larger than the egress MTU (the stack sends the ICMP error or
 * fragments), VLAN-tagged frames, and devices not in tx_ports. Built with
 * -DSVCXDP_STACK_FORWARD, every translated frame goes to the stack.
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

static __always_inline int forward(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
				   int vlan, struct events *ev)
{
#ifndef SVCXDP_STACK_FORWARD
	if (!vlan && ip->ttl > 1) {
		struct bpf_fib_lookup p = {};
		fib_params_set(&p, ctx, ip, ip->daddr);
		if (bpf_fib_lookup(ctx, &p, sizeof(p), 0) == BPF_FIB_LKUP_RET_SUCCESS)
			return fib_redirect(eth, ip, p.ifindex, p.smac, p.dmac, ev);
	}
#endif
	return XDP_PASS;
}

#endif /* SVCXDP_FIB_H */
