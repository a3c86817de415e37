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
};

/* The address and port an external flow to another node leaves with. ip 0: none. */
struct np_snat {
	__be32 ip;
	__be16 port;
};

static __always_inline void np_route_lookup(struct xdp_md *ctx, const struct iphdr *ip, __be32 dst,
					    struct np_route *r)
{
	struct bpf_fib_lookup p = {};
	fib_params_set(&p, ctx, ip, dst);
	r->rc = bpf_fib_lookup(ctx, &p, sizeof(p), SVCXDP_FIB_LOOKUP_SRC);
	r->ifindex = p.ifindex;
	r->src = p.ipv4_src;
	__builtin_memcpy(r->smac, p.smac, ETH_ALEN);
	__builtin_memcpy(r->dmac, p.dmac, ETH_ALEN);
}

/* Does the route to the backend leave by the interface the packet came in on? Then
 * the backend is on another node and the flow needs SNAT. (With no neighbour entry
 * yet the FIB still names the device and the source address.) */
static __always_inline int np_hairpin(struct xdp_md *ctx, const struct np_route *r)
{
	return (r->rc == BPF_FIB_LKUP_RET_SUCCESS || r->rc == BPF_FIB_LKUP_RET_NO_NEIGH) &&
	       r->ifindex == ctx->ingress_ifindex && r->src != 0;
}

/* loadBalancerSourceRanges: is the client inside one of the frontend's CIDRs? */
static __always_inline int np_source_allowed(__u32 svc_id, __be32 client)
{
	struct src_range_key k = {};
	k.prefixlen = 64;
	k.svc_id = svc_id;
	k.addr = client;
	return source_ranges.lookup(&k) != NULL;
}

/* Choose the SNAT port of a new flow and record its reply entry. The first try is the
 * client's own port folded into the range (kept when free, as netfilter does), the next
 * ones random ports (--random-fully), so two clients using the same port towards the
 * same backend collide and the second takes another. An entry
 * found idle past its timeout, or left by this same client tuple (a reopened flow),
 * is taken over. Returns 0, or -1 when SVCXDP_SNAT_TRIES ports are all busy. */
static __always_inline int np_snat_alloc(const struct ct_key *fwd, __be32 backend, __be16 bport,
					 __be32 node_ip, __u32 svc_id, __u64 now, __u8 tcp_flags,
					 struct np_snat *out)
{
	struct ct_key rk;
	ct_key_set(&rk, backend, node_ip, bport, 0, fwd->proto, SVCXDP_CT_DIR_SNAT);
	struct ct_value rv = {};
	rv.last_seen = now;
	rv.nat_ip = fwd->dst;
	rv.nat_port = fwd->dport;
	rv.peer_ip = fwd->src;
	rv.peer_port = fwd->sport;
	rv.svc_id = svc_id;
	if (tcp_flags & (TCPF_FIN | TCPF_RST))
		rv.flags = SVCXDP_CT_F_CLOSING;
	__u32 want = bpf_ntohs(fwd->sport);
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < SVCXDP_SNAT_TRIES; i++) {
		/* Random after the first: linear probing piles busy ports up in runs, and one
		 * flow would meet the same full run on every retry. */
		if (i)
			want = bpf_get_prandom_u32();
		__u16 port = SVCXDP_SNAT_PORT_MIN + (want & (SVCXDP_SNAT_PORT_COUNT - 1));
		rk.dport = bpf_htons(port);
		if (conntrack.insert(&rk, &rv) == 0)
			goto found;
		struct ct_value *old = conntrack.lookup(&rk);
		if (old && (!ct_alive(old, now, rk.proto) ||
			    (old->peer_ip == rv.peer_ip && old->peer_port == rv.peer_port &&
			     old->nat_ip == rv.nat_ip && old->nat_port == rv.nat_port))) {
			conntrack.update(&rk, &rv);
			goto found;
		}
	}
	return -1;
found:
	out->ip = node_ip;
	out->port = rk.dport;
	return 0;
}

/* A new external flow's first packet, handed to the tail program: the frontend it
 * addressed (the packet is DNATed by then), its service, whether source ranges apply. */
static __always_inline void np_pending_new(const struct ct_key *fwd, __u32 svc_id, int ranges)
{
	__u32 zero = 0;
	struct np_pending *pd = np_scratch.lookup(&zero);
	if (!pd)
		return;
	pd->vip = fwd->dst;
	pd->vport = fwd->dport;
	pd->svc_id = svc_id;
	pd->ranges = ranges != 0;
	pd->fresh = 1;
}

/* loadBalancerSourceRanges, checked on a new flow as kube-proxy's firewall chain does
 * (ctstate NEW): a client outside them loses the flow just recorded and the packet.
 * Here in the tail because the check in svcxdp_external cost it ~110,000 verified
 * instructions, past the budget. */
static __always_inline int np_source_denied(struct iphdr *ip, void *data_end,
					    const struct np_pending *pd)
{
	if (!pd->ranges || np_source_allowed(pd->svc_id, ip->saddr))
		return 0;
	__be16 *ports = (void *)ip + ip->ihl * 4;
	if ((void *)(ports + 2) > data_end)
		return 1;
	struct ct_key fk;
	ct_key_set(&fk, ip->saddr, pd->vip, ports[0], pd->vport, ip->protocol, SVCXDP_CT_DIR_FORWARD);
	struct ct_value *v = ct_lookup(&fk);
	if (v)
		ct_uncount(v);
	conntrack.delete(&fk);
	ct_unconfirmed.delete(&fk);
	return 1;
}

static __always_inline void np_pending_clear(void)
{
	__u32 zero = 0;
	struct np_pending *pd = np_scratch.lookup(&zero);
	if (pd)
		pd->fresh = 0;
}

/* The tail's part of a new flow (already DNATed, recorded in conntrack): when the
 * backend is behind the interface the packet came in on, choose the SNAT port, note
 * it in the flow's entry (and its first fragment's record) and rewrite the source.
 * Returns -1 when no port is free (the packet is dropped). */
static __always_inline int np_snat_new(struct xdp_md *ctx, struct iphdr *ip, void *data_end,
				       const struct np_pending *pd, struct events *ev)
{
	struct np_route r;
	np_route_lookup(ctx, ip, ip->daddr, &r);
	if (!np_hairpin(ctx, &r))
		return 0;
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
	struct ct_key fk;
	ct_key_set(&fk, ip->saddr, pd->vip, ports[0], pd->vport, ip->protocol, SVCXDP_CT_DIR_FORWARD);
	struct np_snat snat;
	if (np_snat_alloc(&fk, ip->daddr, ports[1], r.src, pd->svc_id, bpf_ktime_get_coarse_ns(),
			  tcp_flags, &snat) < 0) {
		ev->main = SVCXDP_CNT_SNAT_EXHAUSTED;
		return -1;
	}
	struct ct_value *v = ct_lookup(&fk);
	if (v) {
		v->peer_ip = snat.ip;
		v->peer_port = snat.port;
		v->flags |= SVCXDP_CT_F_SNAT;
	}
	if (ip->frag_off & bpf_htons(IP_MF)) {
		struct frag_key k = {};
		frag_key_set(&k, ip, ip->saddr, pd->vip);
		struct frag_value *f = fragments.lookup(&k);
		if (f)
			f->peer_ip = snat.ip;
	}
	nat_src(ip, &ports[0], &csum, snat.ip, snat.port);
	ev->main = SVCXDP_CNT_SNAT_NEW;
	return 0;
}

/* Send a translated frame on: back out of the interface it came in on with XDP_TX,
 * to another device with bpf_redirect when built with SVCXDP_FIB_REDIRECT, else to
 * the stack (no neighbour yet, TTL about to expire, VLAN tags, or a local pod by
 * default). The body of the svcxdp_np_out tail program: the frame is re-parsed, its
 * headers already hold the new addresses. */
static __always_inline int np_forward(struct xdp_md *ctx, struct events *ev)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || eth->h_proto != ETH_P_IP_BE)
		return XDP_PASS;
	__u32 zero = 0;
	struct np_pending *pd = np_scratch.lookup(&zero);
	if (pd && pd->fresh) {
		pd->fresh = 0;
		if (np_source_denied(ip, data_end, pd)) {
			ev->main = SVCXDP_CNT_DROP_SOURCE_RANGE;
			return XDP_DROP;
		}
		if (np_snat_new(ctx, ip, data_end, pd, ev) < 0)
			return XDP_DROP;
	}
	struct np_route r;
	np_route_lookup(ctx, ip, ip->daddr, &r);
	if (r.rc != BPF_FIB_LKUP_RET_SUCCESS || ip->ttl <= 1)
		return XDP_PASS;
	int tx = r.ifindex == ctx->ingress_ifindex;
#ifndef SVCXDP_FIB_REDIRECT
	if (!tx)
		return XDP_PASS;
#endif
	ip_decrease_ttl(ip);
	__builtin_memcpy(eth->h_dest, r.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, r.smac, ETH_ALEN);
	if (tx) {
		ev->extra = SVCXDP_CNT_XDP_TX;
		return XDP_TX;
	}
	ev->extra = SVCXDP_CNT_FIB_REDIRECT;
	return bpf_redirect(r.ifindex, 0);
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
	struct ct_value *v = conntrack.lookup(&k);
	__u64 now = bpf_ktime_get_coarse_ns();
	if (!v || !ct_alive(v, now, k.proto))
		return -1;
	if (ct_touch(v, now, tcp_flags)) {
		/* The backend closes first: give back the forward entry's count (lc.h). */
		struct ct_key fk;
		ct_key_set(&fk, v->peer_ip, v->nat_ip, v->peer_port, v->nat_port, k.proto,
			   SVCXDP_CT_DIR_FORWARD);
		struct ct_value *fv = ct_lookup(&fk);
		if (fv)
			ct_uncount(fv);
	}
	nat_src(ip, sport, csum, v->nat_ip, v->nat_port);
	nat_dst(ip, dport, csum, v->peer_ip, v->peer_port);
	frag_record(ip, k.src, k.dst, v->nat_ip, v->peer_ip, SVCXDP_CT_DIR_REPLY);
	svc_account(v->svc_id, frame_bytes(ip, (void *)ip - (void *)eth), 0, 0);
	ev->main = SVCXDP_CNT_SNAT_REPLY;
	return SVCXDP_VERDICT_NP_OUT;
}

#endif /* SVCXDP_NODEPORT_H */
